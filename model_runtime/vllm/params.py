"""Our requests in vLLM's terms and vLLM's outputs in ours. Plain data both ways: this module imports
no vLLM, so that both processes (and the tests) can read it; the worker builds vLLM's objects from it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from model_runtime.scheduler.events import Event, TokenLogprobs
from model_runtime.scheduler.params import SamplingParams
from model_runtime.vllm.spec import VllmSpec

# Logprobs a request may ask for (chat's top_logprobs goes up to 20); vLLM sizes a buffer by it.
MAX_LOGPROBS = 20
# vLLM's own finish reasons that are ours too; "abort" is a cancel or a time limit, which the worker
# reports itself.
FINISH_REASONS = frozenset({"stop", "length"})


def engine_args(spec: VllmSpec) -> dict[str, Any]:
    """vLLM's engine arguments (AsyncEngineArgs) for the spec: the same model folder, batch and context
    limits as the builtin engine would have."""
    model, scheduler = spec.model, spec.scheduler
    args: dict[str, Any] = {
        "model": model.path,
        "tokenizer": model.path,
        "served_model_name": [model.name],
        "dtype": model.dtype,
        "trust_remote_code": model.trust_remote_code,
        "max_num_seqs": scheduler.max_batch_size,
        # Chunked prefill: a longer prompt is prefilled in passes of this many tokens, as ours are.
        "max_num_batched_tokens": max(scheduler.max_prefill_tokens, scheduler.max_batch_size),
        "tensor_parallel_size": model.tensor_parallel_size,
        "pipeline_parallel_size": model.pipeline_parallel_size,
        "gpu_memory_utilization": spec.vllm.gpu_memory_utilization,
        "enforce_eager": spec.vllm.enforce_eager,
        "max_logprobs": MAX_LOGPROBS,
        # Sampling defaults are the request's, never the folder's generation_config.json.
        "generation_config": "vllm",
        "disable_log_stats": False,
    }
    if model.max_context is not None:
        args["max_model_len"] = model.max_context
    if model.gpus == 1:
        # One device: the model runs inside vLLM's engine-core process, as vLLM does by default on a GPU.
        # On a CPU its default is a worker process of its own, which spins on its shared-memory queue for
        # a second after each message, so all the time it serves: on 2 cores the pair took 2.6 ms of CPU
        # per token where the one process takes 1.4 (docs/benchmarks.md). vllm_environment sets what
        # lets the CPU build keep this choice.
        args["distributed_executor_backend"] = "uni"
    return args


def cli_flags(args: dict[str, Any]) -> list[str]:
    """engine_args as vLLM's own server takes them on its command line (a benchmark runs vLLM alone with
    the very settings this engine gives it)."""
    flags: list[str] = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags += [flag] if value else []
        elif isinstance(value, list):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags


def sampling_args(params: SamplingParams, prompt_tokens: int, max_context: int) -> dict[str, Any]:
    """vLLM's SamplingParams arguments for one choice. Every parameter the API accepts has its
    counterpart; generation ends at the context limit with "length", as the builtin engine's does."""
    max_tokens = max(1, min(params.max_tokens, max_context - prompt_tokens))
    return {
        "n": 1,
        "max_tokens": max_tokens,
        "min_tokens": min(params.min_tokens, max_tokens),
        "temperature": 0.0 if params.greedy else params.temperature,
        "top_p": params.top_p,
        "seed": params.seed,
        "stop": list(params.stop) or None,
        "ignore_eos": params.ignore_eos,
        "logprobs": params.logprobs,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "logit_bias": dict(params.logit_bias) or None,
    }


class Logprob(Protocol):
    logprob: float
    rank: int | None


class Completion(Protocol):
    """What the worker reads of vLLM's CompletionOutput (one choice, its delta since the last output)."""

    text: str
    token_ids: Sequence[int]
    finish_reason: str | None
    logprobs: Sequence[Mapping[int, Logprob]] | None


def event_of(index: int, output: Completion, generated: int, top: int | None) -> Event:
    """The event of one choice for one vLLM output: its new text, tokens so far, the finish if any."""
    finish = output.finish_reason if output.finish_reason in FINISH_REASONS else None
    return Event(index, output.text, generated, finish, token_logprobs(output, top))


def token_logprobs(output: Completion, top: int | None) -> tuple[TokenLogprobs, ...]:
    """Per new token: its log-probability and the `top` most likely ones, best first (vLLM returns
    the top ranks and the chosen token, whatever its rank)."""
    if top is None or not output.logprobs:
        return ()
    result = []
    for token, ranked in zip(output.token_ids, output.logprobs, strict=True):
        best = sorted(
            ((t, p) for t, p in ranked.items() if p.rank is not None and p.rank <= top),
            key=lambda item: item[1].rank or 0,
        )
        result.append(TokenLogprobs(token, ranked[token].logprob, tuple((t, p.logprob) for t, p in best)))
    return tuple(result)
