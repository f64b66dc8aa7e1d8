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
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from model_runtime.access import DEFAULT_PRIORITY, Priority
from model_runtime.config import SchedulerSettings
from model_runtime.engine.base import Engine, RoutableEngine
from model_runtime.scheduler.events import (
    Dispatch,
    EngineError,
    Event,
    Handle,
    QueueFull,
    QueueTimeout,
    RequestTimeout,
    SchedulerClosed,
    Sink,
    TokenLogprobs,
    deliver_here,
    retry_after,
)
from model_runtime.scheduler.line import WaitingLine, classes_open
from model_runtime.scheduler.params import SamplingParams
from model_runtime.scheduler.sampling import LogitBias, SampleRow, make_bias, make_generator, sample
from model_runtime.scheduler.text import IncrementalText

log = logging.getLogger(__name__)


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
    bias: LogitBias | None
    generated: int = 0
    last_token: int = -1
    finish_reason: str | None = None
    error: Exception | None = None
    pending_text: str = ""  # released by IncrementalText, not yet delivered
    output: list[int] = field(default_factory=list)  # generated tokens, kept only for penalties
    pending: list[TokenLogprobs] = field(default_factory=list)


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        settings: SchedulerSettings,
        dispatch: Dispatch = deliver_here,
    ) -> None:
        """dispatch hands each step's events to their sinks; a server passes one that moves the whole
        step to its event loop in one wake-up instead of one per request."""
        self.engine = engine
        self._dispatch = dispatch
        self.settings = settings
        self._eos = sorted(engine.info.eos_token_ids)
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._waiting: WaitingLine[_Seq] = WaitingLine(settings.priority_max_bypass)
        self._cancelled: set[int] = set()
        self._running: list[_Seq] = []
        self._stopping = False
        self._step_seconds = 0.05  # running mean, for Retry-After hints
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)

    # --- called from request handlers (any thread) ----------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(
        self,
        prompt: Sequence[int],
        params: Sequence[SamplingParams],
        sink: Sink,
        priority: Priority = DEFAULT_PRIORITY,
    ) -> Handle:
        """Queue one sequence per entry of params (a request's n choices), all or none, in the line of
        its priority class."""
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
                bias=make_bias(p.logit_bias),
            )
            for i, p in enumerate(params)
        ]
        with self._cond:
            if self._stopping:
                raise SchedulerClosed()
            free_slots = self.settings.max_batch_size - len(self._running)
            if len(self._waiting) + len(seqs) > self.settings.max_queue + max(free_slots, 0):
                raise QueueFull(self.retry_after())
            self._waiting.extend(seqs, priority)
            self._cond.notify()
        return Handle(tuple(s.id for s in seqs))

    def cancel(self, handle: Handle) -> None:
        with self._cond:
            self._cancelled.update(handle.seq_ids)
            self._cond.notify()

    def retry_after(self) -> float:
        return retry_after(self._step_seconds)

    @property
    def load(self) -> tuple[tuple[int, ...], int]:
        """(sequences waiting in each priority class, running sequences)."""
        return self._waiting.depths(), len(self._running)

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
                withdrawn = self._withdraw_locked(cancelled)
                expired = self._take_expired_locked(time.monotonic())
                admitted = self._admit_locked()
            started = time.monotonic()
            touched: dict[int, tuple[Sink, list[Event]]] = {}
            for seq in [*withdrawn, *expired]:
                self._emit(seq, touched)
            self._apply_cancellations(cancelled, touched)
            self._retire(touched)  # cancelled sequences leave before the pass
            try:
                if admitted or self._running:
                    self._step(admitted, touched)
            except Exception as exc:  # the engine failed: end everything live, keep serving
                log.exception("engine step failed; resetting the batch")
                self._fail_all(EngineError(f"the engine failed: {exc}"), touched)
            self._retire(touched)
            if touched:
                self._dispatch(list(touched.values()))
            self._step_seconds = 0.9 * self._step_seconds + 0.1 * (time.monotonic() - started)

    def _withdraw_locked(self, cancelled: set[int]) -> list[_Seq]:
        """Waiting sequences whose request was cancelled leave the line without running, and say so."""
        if not cancelled:
            return []
        withdrawn = [s for s in self._waiting if s.id in cancelled]
        for seq in withdrawn:
            self._waiting.remove(seq)
            seq.finish_reason = "cancelled"
        return withdrawn

    def _take_expired_locked(self, now: float) -> list[_Seq]:
        limit = self.settings.queue_timeout_s
        expired = [s for s in self._waiting if now - s.arrival > limit]
        for seq in expired:
            self._waiting.remove(seq)
            seq.error = QueueTimeout(limit, self.retry_after())
        return expired

    def _admit_locked(self) -> list[_Seq]:
        """Waiting sequences for one prefill: as many as there are slots and prefill budget (prompt
        tokens), in the waiting line's order (by priority, see line.py); a prompt longer than the budget
        goes alone (the engine chunks it)."""
        admitted: list[_Seq] = []
        tokens = 0
        settings = self.settings
        while (taken := len(self._running) + len(admitted)) < settings.max_batch_size:
            classes = classes_open(taken, settings)
            seq = self._waiting.peek(classes)
            if seq is None or (admitted and tokens + len(seq.prompt) > settings.max_prefill_tokens):
                break
            admitted.append(self._waiting.pop(classes))
            tokens += len(seq.prompt)
        return admitted

    def _apply_cancellations(self, cancelled: set[int], touched: dict) -> None:
        if not cancelled:
            return
        for seq in self._running:
            if seq.id in cancelled:
                seq.finish_reason = "cancelled"
                self._emit(seq, touched)

    def _step(self, admitted: list[_Seq], touched: dict) -> None:
        """One engine pass: the next token of every running sequence and the prompts that join."""
        live = self._running  # cancelled ones left in _retire before this step
        self._running = live + admitted  # so that an engine failure ends the joining ones too
        for seq in admitted:
            if seq.params.route is not None:
                self._route(seq.id, seq.params.route)
        logits = self.engine.step(
            [s.id for s in live],
            [s.last_token for s in live],
            [s.id for s in admitted],
            [s.prompt for s in admitted],
        )
        self._advance(self._running, logits, touched)

    def _route(self, seq_id: int, part: int) -> None:
        if not isinstance(self.engine, RoutableEngine):
            raise TypeError(f"{type(self.engine).__name__} has no parts to route a sequence to")
        self.engine.route(seq_id, part)

    def _advance(self, seqs: list[_Seq], logits: torch.Tensor, touched: dict) -> None:
        rows = [
            SampleRow(
                s.params,
                s.generator,
                s.params.ignore_eos or s.generated < s.params.min_tokens,
                s.bias,
                s.output if s.params.penalizes else (),
            )
            for s in seqs
        ]
        tokens, logprobs = sample(logits, rows, self._eos)
        now = time.monotonic()
        deadline = self.settings.request_timeout_s
        for seq, token, lp in zip(seqs, tokens, logprobs, strict=True):
            seq.last_token = token
            seq.generated += 1
            if seq.params.penalizes:
                seq.output.append(token)
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
        if touched:
            self._dispatch(list(touched.values()))
