"""POST /v1/completions."""

from __future__ import annotations

from typing import Any, cast

from fastapi import APIRouter, Request

from model_runtime.scheduler.events import Event, TokenLogprobs
from model_runtime.server.auth import key_policy
from model_runtime.server.errors import bad_request
from model_runtime.server.formatting import ChoiceResult, Envelope, TokenTexts, client_finish_reason
from model_runtime.server.generation import (
    Generation,
    check_common,
    check_size,
    resolve_max_tokens,
    respond,
    sampling_params,
)
from model_runtime.server.protocol import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Usage,
)
from model_runtime.server.state import ServedModel

router = APIRouter()

Prompt = str | list[str] | list[int] | list[list[int]]


def as_prompts(prompt: Prompt) -> list[str | list[int]]:
    """The request's prompts as a list: a string or a list of token ids is one prompt."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        return [prompt]
    return list(cast(list[str] | list[list[int]], prompt))


def prompt_size(prompts: list[str | list[int]]) -> tuple[int, int]:
    """(prompts, characters of text to tokenize); token ids are not tokenized."""
    return len(prompts), sum(len(p) for p in prompts if isinstance(p, str))


def tokenize_prompts(prompt: list[str | list[int]], served: ServedModel) -> list[list[int]]:
    """Runs on the tokenizing threads (RuntimeState.tokenize): the cost grows with the prompts."""
    tokenizer = served.tokenizer
    if not prompt:
        raise bad_request("prompt must not be empty", "prompt")
    vocab = len(tokenizer)
    prompts: list[list[int]] = []
    for i, item in enumerate(prompt):
        param = "prompt" if len(prompt) == 1 else f"prompt[{i}]"
        ids = tokenizer(item)["input_ids"] if isinstance(item, str) else list(item)
        if not ids:
            raise bad_request(f"{param} must not be empty", param)
        if isinstance(item, list) and not all(0 <= t < vocab for t in ids):
            raise bad_request(
                f"{param} holds token ids outside this model's vocabulary (0..{vocab - 1})", param
            )
        prompts.append(ids)
    return prompts


class CompletionFormatter:
    def __init__(self, served: ServedModel, logprobs: int | None) -> None:
        self.envelope = Envelope(served.name, served.fingerprint, "text_completion", "cmpl")
        self._texts = TokenTexts(served.tokenizer) if logprobs is not None else None
        self._top = bool(logprobs)
        self._offsets: dict[int, int] = {}

    def _logprobs(
        self, index: int, entries: list[TokenLogprobs] | tuple[TokenLogprobs, ...]
    ) -> CompletionLogprobs | None:
        if self._texts is None:
            return None
        tokens = [self._texts(e.token) for e in entries]
        offsets, offset = [], self._offsets.get(index, 0)
        for text in tokens:
            offsets.append(offset)
            offset += len(text)
        self._offsets[index] = offset
        return CompletionLogprobs(
            tokens=tokens,
            token_logprobs=[e.logprob for e in entries],
            top_logprobs=[{self._texts(t): lp for t, lp in e.top} for e in entries] if self._top else None,
            text_offset=offsets,
        )

    def chunks(self, event: Event, first: bool) -> list[str]:
        if not event.text and event.finish_reason is None and not event.logprobs:
            return []
        logprobs = self._logprobs(event.index, event.logprobs)
        choice = {
            "index": event.index,
            "text": event.text,
            "logprobs": logprobs.model_dump() if logprobs else None,
            "finish_reason": client_finish_reason(event.finish_reason),
        }
        return [self.envelope.chunk([choice])]

    def body(self, choices: list[ChoiceResult], usage: Usage) -> Completion:
        return Completion(
            **self.envelope.head(),
            choices=[
                CompletionChoice(
                    index=c.index,
                    text=c.text,
                    logprobs=self._logprobs(c.index, c.logprobs),
                    finish_reason=client_finish_reason(c.finish_reason),
                )
                for c in choices
            ],
            usage=usage,
        )


@router.post("/v1/completions", response_model=Completion)
async def create_completion(req: CompletionRequest, request: Request) -> Any:
    runtime = request.app.state.runtime
    runtime.check_accepting()
    policy = key_policy(request)
    served = runtime.model(req.model, policy)
    if req.echo:
        raise bad_request("echo is not supported by this server", "echo")
    if req.suffix:
        raise bad_request("suffix is not supported by this server", "suffix")
    if req.best_of not in (None, req.n):
        raise bad_request("best_of must equal n on this server", "best_of")
    bias = check_common(req, runtime, served)
    given = as_prompts(req.prompt)
    check_size(*prompt_size(given), req.n, runtime.settings, "prompt")
    prompts = await runtime.tokenize(served, tokenize_prompts, given, served)
    limits = runtime.settings.scheduler
    max_tokens = resolve_max_tokens(
        served, max(len(p) for p in prompts), req.max_tokens, "max_tokens" in req.model_fields_set, "prompt"
    )
    formatter = CompletionFormatter(served, req.logprobs)
    params, writer = served.hook.plan(
        req, sampling_params(req, max_tokens, req.logprobs, bias), formatter, len(prompts), limits
    )
    generation = Generation(served, prompts, params, limits.request_timeout_s, policy.priority)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return await respond(
        generation, writer, req.stream, include_usage, request, formatter.envelope.usage_chunk
    )
