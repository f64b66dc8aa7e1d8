"""Iteration-level (continuous) batching over any engine that meets the contract in engine/base.py.

One thread owns the engine. Each loop it admits waiting sequences (one padded prefill), runs one decode
step for every live sequence, samples, turns tokens into text, and hands the results to each request's
sink. A sequence joins between two steps and leaves as soon as it finishes, so a short request never
waits for a long one. The waiting line is bounded (QueueFull, which the server answers with 429), every
sequence has a queue deadline and a total deadline, and a cancelled sequence leaves at the next step.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from model_runtime.config import SchedulerSettings
from model_runtime.engine.base import Engine, EngineError
from model_runtime.scheduler.sampling import SampleRow, SamplingParams, TokenLogprobs, make_generator, sample
from model_runtime.scheduler.text import IncrementalText

log = logging.getLogger(__name__)


class SchedulerError(RuntimeError):
    """Base of the reasons a sequence ends without a normal finish."""


class QueueFull(SchedulerError):
    def __init__(self, retry_after: float) -> None:
        super().__init__("the server is at capacity; retry later")
        self.retry_after = retry_after


class QueueTimeout(SchedulerError):
    def __init__(self, waited: float, retry_after: float) -> None:
        super().__init__(f"no batch slot became free within {waited:.0f}s; retry later")
        self.retry_after = retry_after


class RequestTimeout(SchedulerError):
    def __init__(self, limit: float) -> None:
        super().__init__(f"the request ran longer than the server's limit of {limit:.0f}s")


class SchedulerClosed(SchedulerError):
    def __init__(self) -> None:
        super().__init__("the model is being unloaded")


@dataclass(frozen=True)
class Event:
    """Progress of one choice of a request, for one step."""

    index: int
    text: str
    tokens: int  # generated so far
    finish_reason: str | None = None  # "stop", "length", "cancelled"
    logprobs: tuple[TokenLogprobs, ...] = ()
    error: Exception | None = None  # a SchedulerError or EngineError: the choice ended abnormally


class Sink(Protocol):
    def deliver(self, events: list[Event]) -> None:
        """Called on the scheduler thread, at most once per step; must not block."""


class Metrics(Protocol):
    def observe_step(self, waiting: int, running: int) -> None: ...
    def observe_first_token(self, seconds: float) -> None: ...
    def observe_inter_token(self, seconds: float) -> None: ...
    def count_tokens(self, prompt: int, generated: int) -> None: ...


@dataclass(eq=False)
class _Seq:
    id: int
    index: int
    prompt: list[int]
    params: SamplingParams
    sink: Sink
    text: IncrementalText
    arrival: float
    generator: torch.Generator | None
    generated: int = 0
    last_token: int = -1
    last_token_at: float = 0.0
    finish_reason: str | None = None
    error: Exception | None = None
    pending_text: str = ""  # released by IncrementalText, not yet delivered
    output: list[int] = field(default_factory=list)  # generated tokens, kept only for penalties
    pending: list[TokenLogprobs] = field(default_factory=list)


@dataclass(frozen=True)
class Handle:
    seq_ids: tuple[int, ...]


class Scheduler:
    def __init__(self, engine: Engine, settings: SchedulerSettings, metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self._eos = sorted(engine.info.eos_token_ids)
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._waiting: deque[_Seq] = deque()
        self._cancelled: set[int] = set()
        self._running: list[_Seq] = []
        self._stopping = False
        self._step_seconds = 0.05  # running mean, for Retry-After hints
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)

    # --- called from request handlers (any thread) ----------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, prompt: Sequence[int], params: Sequence[SamplingParams], sink: Sink) -> Handle:
        """Queue one sequence per entry of params (a request's n choices), all or none."""
        now = time.monotonic()
        seqs = [
            _Seq(
                id=next(self._ids),
                index=i,
                prompt=list(prompt),
                params=p,
                sink=sink,
                text=IncrementalText(self.engine.tokenizer, prompt, p.stop),
                arrival=now,
                generator=make_generator(p.seed),
            )
            for i, p in enumerate(params)
        ]
        with self._cond:
            if self._stopping:
                raise SchedulerClosed()
            free_slots = self.settings.max_batch_size - len(self._running)
            if len(self._waiting) + len(seqs) > self.settings.max_queue + max(free_slots, 0):
                raise QueueFull(self.retry_after())
            self._waiting.extend(seqs)
            self._cond.notify()
        return Handle(tuple(s.id for s in seqs))

    def cancel(self, handle: Handle) -> None:
        with self._cond:
            self._cancelled.update(handle.seq_ids)
            self._cond.notify()

    def retry_after(self) -> float:
        """A rough time until capacity frees: a typical request's worth of steps."""
        return max(1.0, round(self._step_seconds * 64))

    @property
    def load(self) -> tuple[int, int]:
        """(waiting, running) sequences."""
        return len(self._waiting), len(self._running)

    def stop(self, timeout: float = 10.0) -> None:
        """Fail whatever is waiting or running with SchedulerClosed and end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- the scheduler thread --------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._waiting or self._running or self._cancelled or self._stopping):
                    self._cond.wait()
                if self._stopping:
                    self._shutdown_locked()
                    return
                cancelled, self._cancelled = self._cancelled, set()
                expired = self._take_expired_locked(time.monotonic())
                admitted = self._admit_locked()
            started = time.monotonic()
            touched: dict[int, tuple[Sink, list[Event]]] = {}
            for seq in expired:
                self._emit(seq, touched)
            self._apply_cancellations(cancelled, touched)
            try:
                if admitted:
                    self._prefill(admitted, touched)
                if self._running:
                    self._decode(touched)
            except Exception as exc:  # the engine failed: end everything live, keep serving
                log.exception("engine step failed; resetting the batch")
                self._fail_all(EngineError(f"the engine failed: {exc}"), touched)
            self._retire(touched)
            for sink, events in touched.values():
                sink.deliver(events)
            self._step_seconds = 0.9 * self._step_seconds + 0.1 * (time.monotonic() - started)
            if self.metrics:
                self.metrics.observe_step(len(self._waiting), len(self._running))

    def _take_expired_locked(self, now: float) -> list[_Seq]:
        limit = self.settings.queue_timeout_s
        expired = [s for s in self._waiting if now - s.arrival > limit]
        for seq in expired:
            self._waiting.remove(seq)
            seq.error = QueueTimeout(limit, self.retry_after())
        return expired

    def _admit_locked(self) -> list[_Seq]:
        admitted: list[_Seq] = []
        width = 0
        while self._waiting and len(self._running) + len(admitted) < self.settings.max_batch_size:
            seq = self._waiting[0]
            if seq.id in self._cancelled:
                self._waiting.popleft()
                self._cancelled.discard(seq.id)
                continue
            new_width = max(width, len(seq.prompt))
            if admitted and new_width * (len(admitted) + 1) > self.settings.max_prefill_tokens:
                break
            admitted.append(self._waiting.popleft())
            width = new_width
        return admitted

    def _apply_cancellations(self, cancelled: set[int], touched: dict) -> None:
        if not cancelled:
            return
        for seq in self._running:
            if seq.id in cancelled:
                seq.finish_reason = "cancelled"
                self._emit(seq, touched)

    def _prefill(self, admitted: list[_Seq], touched: dict) -> None:
        logits = self.engine.prefill([s.id for s in admitted], [s.prompt for s in admitted])
        now = time.monotonic()
        for seq in admitted:
            seq.last_token_at = now
        self._running.extend(admitted)
        if self.metrics:
            self.metrics.count_tokens(sum(len(s.prompt) for s in admitted), 0)
        self._advance(admitted, logits, touched, first=True)

    def _decode(self, touched: dict) -> None:
        live = [s for s in self._running if s.finish_reason is None and s.error is None]
        # Finished sequences are released before the next step, so live == running here.
        logits = self.engine.decode([s.id for s in live], [s.last_token for s in live])
        self._advance(live, logits, touched, first=False)

    def _advance(self, seqs: list[_Seq], logits: torch.Tensor, touched: dict, first: bool) -> None:
        rows = [
            SampleRow(
                s.params,
                s.generator,
                s.params.ignore_eos or s.generated < s.params.min_tokens,
                s.output if s.params.adjusts_logits else (),
            )
            for s in seqs
        ]
        tokens, logprobs = sample(logits, rows, self._eos)
        now = time.monotonic()
        deadline = self.settings.request_timeout_s
        generated = 0
        for seq, token, lp in zip(seqs, tokens, logprobs, strict=True):
            if self.metrics:
                if first:
                    self.metrics.observe_first_token(now - seq.arrival)
                else:
                    self.metrics.observe_inter_token(now - seq.last_token_at)
            seq.last_token, seq.last_token_at = token, now
            seq.generated += 1
            if seq.params.adjusts_logits:
                seq.output.append(token)
            generated += 1
            if lp is not None:
                seq.pending.append(lp)
            if token in self._eos and not seq.params.ignore_eos:
                seq.finish_reason = "stop"
            else:
                seq.pending_text += seq.text.add(token)
                if seq.text.stopped:
                    seq.finish_reason = "stop"
                elif seq.generated >= seq.params.max_tokens or (
                    len(seq.prompt) + seq.generated >= self.engine.info.max_context
                ):
                    seq.finish_reason = "length"
                elif now - seq.arrival > deadline:
                    seq.error = RequestTimeout(deadline)
            self._emit(seq, touched)
        if self.metrics:
            self.metrics.count_tokens(0, generated)

    def _emit(self, seq: _Seq, touched: dict) -> None:
        if seq.finish_reason is not None or seq.error is not None:
            seq.pending_text += seq.text.flush()
        event = Event(
            seq.index, seq.pending_text, seq.generated, seq.finish_reason, tuple(seq.pending), seq.error
        )
        seq.pending_text, seq.pending = "", []
        sink_events = touched.setdefault(id(seq.sink), (seq.sink, []))[1]
        sink_events.append(event)

    def _retire(self, touched: dict) -> None:
        done = [s for s in self._running if s.finish_reason is not None or s.error is not None]
        if done:
            self.engine.release([s.id for s in done])
            self._running = [s for s in self._running if s.finish_reason is None and s.error is None]

    def _fail_all(self, error: Exception, touched: dict) -> None:
        for seq in self._running:
            if seq.finish_reason is None and seq.error is None:
                seq.error = error
                self._emit(seq, touched)
        self.engine.reset()
        self._running = []

    def _shutdown_locked(self) -> None:
        touched: dict = {}
        for seq in [*self._waiting, *self._running]:
            seq.error = SchedulerClosed()
            self._emit(seq, touched)
        self._waiting.clear()
        self.engine.reset()
        self._running = []
        for sink, events in touched.values():
            sink.deliver(events)
