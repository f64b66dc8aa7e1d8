"""What completions and chat share: checking a request against the model's limits, turning it into
sequences for the scheduler, and carrying the scheduler's events back to the HTTP response, streamed
as server-sent events or collected into one body. The two endpoints differ only in how they build
the prompt and how they format a choice (a Formatter, formatting.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from model_runtime.access import DEFAULT_PRIORITY, Priority
from model_runtime.config import Settings
from model_runtime.scheduler.events import Event, Handle, RequestTimeout
from model_runtime.scheduler.params import SamplingParams
from model_runtime.server.errors import APIError, bad_request, from_exception
from model_runtime.server.formatting import ChoiceResult, Formatter, accumulate
from model_runtime.server.protocol import Usage, _SamplingFields
from model_runtime.server.state import RuntimeState, ServedModel


def resolve_max_tokens(
    served: ServedModel,
    prompt_tokens: int,
    requested: int | None,
    explicit: bool,
    prompt_param: str,
    budget_param: str = "max_tokens",
) -> int:
    """The generation budget: what the client asked for, if it fits the context; all that is left when
    it did not ask. A prompt that fills the context, or an explicit budget that overflows it, is a 400."""
    context = served.info.max_context
    if prompt_tokens >= context:
        raise bad_request(
            f"This model's maximum context length is {context} tokens. However, your {prompt_param} "
            f"resulted in {prompt_tokens} tokens, which leaves no room to generate.",
            prompt_param,
            "context_length_exceeded",
        )
    left = context - prompt_tokens
    if requested is None:
        return left
    if requested > left and explicit:
        raise bad_request(
            f"{budget_param} is too large: {requested}. This model's maximum context length is {context} "
            f"tokens and your request has {prompt_tokens} input tokens, so at most {left} can be generated.",
            budget_param,
            "context_length_exceeded",
        )
    return min(requested, left)


def check_size(prompts: int, chars: int, n: int, settings: Settings, param: str) -> None:
    """The checks that cost nothing, made before any tokenizing: the sequences a request asks for
    (prompts x n) against what the scheduler can hold, and its characters against
    server.max_prompt_chars (tokenizing costs in proportion to them)."""
    limits = settings.scheduler
    if prompts * n > limits.max_batch_size + limits.max_queue:
        raise bad_request(
            f"{prompts} prompts x n={n} is more sequences than this server can hold at once "
            f"({limits.max_batch_size + limits.max_queue})",
            param,
        )
    if chars > settings.server.max_prompt_chars:
        raise bad_request(
            f"{param} is too long: {chars} characters; this server takes at most "
            f"{settings.server.max_prompt_chars} per request",
            param,
            "context_length_exceeded",
        )


def http_deadline(request_timeout_s: float) -> float:
    """How long the HTTP side waits for a request's events. The engine ends a request at
    request_timeout_s itself; this later deadline ends it even when the engine never answers."""
    return request_timeout_s * 1.1 + 5.0


def check_common(req: _SamplingFields, state: RuntimeState, served: ServedModel) -> dict[int, float]:
    """Checks shared by both endpoints; returns the logit bias as token id -> bias."""
    if req.n > state.settings.scheduler.max_n:
        raise bad_request(
            f"n is too large: {req.n}; this server allows at most {state.settings.scheduler.max_n}", "n"
        )
    # The protocol took only keys in ASCII digits, at most MAX_LOGIT_BIAS_ENTRIES, values in range;
    # what is left is the one bound that depends on the model.
    bias = {int(key): value for key, value in (req.logit_bias or {}).items()}
    vocab = len(served.tokenizer)
    if outside := [token for token in bias if token >= vocab]:
        raise bad_request(
            f"logit_bias: {outside[0]} is not a token id of this model (0..{vocab - 1})", "logit_bias"
        )
    return bias


def sampling_params(
    req: _SamplingFields, max_tokens: int, logprobs: int | None, bias: dict[int, float]
) -> list[SamplingParams]:
    """One entry per choice; a seeded request gives choice i the seed seed+i, so choices differ but
    the whole request is reproducible."""
    return [
        SamplingParams(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=None if req.seed is None else req.seed + i,
            stop=tuple(req.stop or ()),
            min_tokens=min(req.min_tokens, max_tokens),
            ignore_eos=req.ignore_eos,
            logprobs=logprobs,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            logit_bias=tuple(bias.items()),
        )
        for i in range(req.n)
    ]


class _QueueSink:
    """Receives a step's events on the event loop (see state.loop_dispatch) and queues them for the
    request; prompt k of a batch numbers its choices from k * n."""

    def __init__(self, queue: asyncio.Queue, offset: int) -> None:
        self._queue, self._offset = queue, offset

    def deliver(self, events: list[Event]) -> None:
        if self._offset:
            events = [replace(e, index=e.index + self._offset) for e in events]
        self._queue.put_nowait(events)


class Generation:
    """One HTTP request's sequences in the scheduler: every prompt times n choices, with a deadline of
    the HTTP side's own (one timer per request, nothing per token)."""

    def __init__(
        self,
        served: ServedModel,
        prompts: Sequence[list[int]],
        params: list[SamplingParams],
        request_timeout_s: float,
        priority: Priority = DEFAULT_PRIORITY,
    ) -> None:
        self.served = served
        self.prompt_tokens = sum(len(p) for p in prompts)
        self._queue: asyncio.Queue[list[Event]] = asyncio.Queue()
        self._open = len(prompts) * len(params)
        self._handles: list[Handle] = []
        self._deadline = asyncio.get_running_loop().call_later(
            http_deadline(request_timeout_s), self._expire, request_timeout_s
        )
        try:
            for k, prompt in enumerate(prompts):
                sink = _QueueSink(self._queue, k * len(params))
                self._handles.append(served.scheduler.submit(prompt, params, sink, priority))
        except Exception as exc:
            self.close()
            raise from_exception(exc) from exc

    async def next_events(self) -> list[Event] | None:
        """Everything that arrived since the last call (at least one step's events; when the client
        reads slower than the model writes, several steps merged, one event per choice), or None when
        every choice has finished."""
        if self._open == 0:
            return None
        events = await self._queue.get()
        while not self._queue.empty():
            events = events + self._queue.get_nowait()
        self._open -= sum(1 for e in events if e.finish_reason or e.error)
        return _merge(events) if len(events) > 1 else events

    def _expire(self, limit: float) -> None:
        """The deadline passed with choices still open: end the request as the engine would have."""
        self._queue.put_nowait([Event(-1, "", 0, error=RequestTimeout(limit))])

    def close(self) -> None:
        """Stop whatever is still generating (client gone, error, shutdown)."""
        self._deadline.cancel()
        if self._open:
            for handle in self._handles:
                self.served.scheduler.cancel(handle)
        self._open = 0


def _merge(events: list[Event]) -> list[Event]:
    merged: dict[int, Event] = {}
    for event in events:
        earlier = merged.get(event.index)
        if earlier is None:
            merged[event.index] = event
        else:
            merged[event.index] = replace(
                event, text=earlier.text + event.text, logprobs=earlier.logprobs + event.logprobs
            )
    return list(merged.values())


def _sse(data: str) -> str:
    return f"data: {data}\n\n"


_DONE = _sse("[DONE]")


def _raise_if_failed(events: list[Event]) -> None:
    for event in events:
        if event.error is not None:
            raise from_exception(event.error)


async def respond(
    generation: Generation,
    formatter: Formatter,
    stream: bool,
    include_usage: bool,
    request: Request,
    usage_chunk: Callable[[Usage], str],
) -> Any:
    """Stream or collect. The first step's events are awaited before any header is sent, so a request
    that fails to start (queue timeout, engine error) still gets its proper status code."""
    try:
        first = await _until_disconnect(generation.next_events(), request)
        if first is not None:
            _raise_if_failed(first)
    except BaseException:
        generation.close()
        raise
    if stream:
        return StreamingResponse(
            _stream(generation, formatter, first, include_usage, usage_chunk),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        choices = await _until_disconnect(_collect(generation, first), request)
    finally:
        generation.close()
    return formatter.body(choices, _usage(generation, choices))


async def _collect(generation: Generation, first: list[Event] | None) -> list[ChoiceResult]:
    results: dict[int, ChoiceResult] = {}
    events = first
    while events is not None:
        _raise_if_failed(events)
        for event in events:
            accumulate(results, event)
        events = await generation.next_events()
    return [results[i] for i in sorted(results)]


def _usage(generation: Generation, choices: list[ChoiceResult]) -> Usage:
    completion = sum(c.tokens for c in choices)
    return Usage(
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=completion,
        total_tokens=generation.prompt_tokens + completion,
    )


async def _stream(
    generation: Generation,
    formatter: Formatter,
    first: list[Event] | None,
    include_usage: bool,
    usage_chunk: Callable[[Usage], str],
) -> AsyncIterator[str]:
    results: dict[int, ChoiceResult] = {}
    try:
        events = first
        while events is not None:
            parts: list[str] = []  # one write per wake-up, however many chunks it carries
            for event in events:
                if event.error is not None:
                    yield "".join(parts) + _sse(json.dumps(from_exception(event.error).body())) + _DONE
                    return
                is_first = event.index not in results
                accumulate(results, event)
                parts.extend(_sse(chunk) for chunk in formatter.chunks(event, is_first))
            if parts:
                yield "".join(parts)
            events = await generation.next_events()
        if include_usage:
            choices = [results[i] for i in sorted(results)]
            yield _sse(usage_chunk(_usage(generation, choices)))
        yield _DONE
    finally:
        # Runs when the client disconnects too (the response task is cancelled): stop generating.
        generation.close()


async def _until_disconnect(awaitable: Any, request: Request) -> Any:
    """Await, but give up (and let the caller cancel generation) if the client goes away first."""
    task = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    raise APIError(499, "client closed the request", code="client_closed_request")


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
