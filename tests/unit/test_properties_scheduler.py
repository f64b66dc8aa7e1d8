"""The scheduler, as a property: for any interleaving of arrivals, cancellations and engine steps, every
accepted choice ends exactly once (and says nothing after), a refused request hears nothing, a cancelled
choice stops within the step already under way, a finish reason tells the truth, and no KV row is left
behind.

The real Scheduler drives the real (tiny, random) Llama engine. The engine is paced: each step waits for
the test's permission, so that the test decides exactly what happens between two steps and a failing
interleaving replays the same way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model_runtime.config import ModelSettings, SchedulerSettings
from model_runtime.engine.base import Engine
from model_runtime.engine.torch_engine import TorchEngine, load_torch_engine
from model_runtime.scheduler.core import Scheduler
from model_runtime.scheduler.events import Event, Handle, QueueFull, Sink, deliver_here
from model_runtime.scheduler.params import SamplingParams

pytestmark = pytest.mark.unit

LIMITS = SchedulerSettings(max_batch_size=2, max_queue=2, max_prefill_tokens=8)
WAIT_S = 30.0


class PacedEngine:
    """The real engine, one step per permission; counts the steps begun and the steps delivered."""

    def __init__(self, engine: TorchEngine) -> None:
        self.engine = engine
        self.info = engine.info
        self.tokenizer = engine.tokenizer
        self._permits = threading.Semaphore(0)
        self._progress = threading.Condition()
        self.begun = 0
        self.delivered = 0  # steps whose events have reached their sinks

    def step(
        self,
        decode_ids: Sequence[int],
        decode_tokens: Sequence[int],
        new_ids: Sequence[int],
        new_prompts: Sequence[Sequence[int]],
    ) -> torch.Tensor:
        self._permits.acquire()
        with self._progress:
            self.begun += 1
        return self.engine.step(decode_ids, decode_tokens, new_ids, new_prompts)

    def release(self, seq_ids: Sequence[int]) -> None:
        self.engine.release(seq_ids)

    def reset(self) -> None:
        self.engine.reset()

    def close(self) -> None:
        self.engine.close()

    def dispatch(self, batch: list[tuple[Sink, list[Event]]]) -> None:
        deliver_here(batch)
        with self._progress:
            self.delivered = self.begun
            self._progress.notify_all()

    def run_step(self) -> None:
        """Allow one step and wait until its events are delivered."""
        with self._progress:
            target = self.begun + 1
        self._permits.release()
        with self._progress:
            assert self._progress.wait_for(lambda: self.delivered >= target, WAIT_S), "step never ran"

    def run_freely(self) -> None:
        for _ in range(10_000):
            self._permits.release()


@dataclass
class Request:
    params: list[SamplingParams]
    prompt: list[int]
    events: list[Event] = field(default_factory=list)
    handle: Handle | None = None
    refused: bool = False
    cancelled_at: dict[int, int] | None = None  # per choice: tokens delivered when cancel was called

    def deliver(self, events: list[Event]) -> None:
        self.events.extend(events)

    def finals(self, index: int) -> list[Event]:
        return [e for e in self.events if e.index == index and e.final]

    def tokens(self, index: int) -> int:
        return max((e.tokens for e in self.events if e.index == index), default=0)

    @property
    def live(self) -> bool:
        return not self.refused and any(not self.finals(i) for i in range(len(self.params)))


@pytest.fixture(scope="module")
def engine(tiny_llama: Path) -> TorchEngine:
    return load_torch_engine(ModelSettings(path=str(tiny_llama)), max_batch=LIMITS.max_batch_size)


submit = st.tuples(
    st.just("submit"),
    st.integers(1, 6),  # prompt tokens
    st.integers(1, 2),  # choices
    st.integers(1, 6),  # max_tokens
    st.booleans(),  # ignore_eos
)
cancel = st.tuples(st.just("cancel"), st.integers(0, 15))
step = st.tuples(st.just("step"), st.integers(1, 3))
scripts = st.lists(st.one_of(submit, submit, cancel, step, step), min_size=1, max_size=14)


def play(scheduler: Scheduler, paced: PacedEngine, script: list[tuple]) -> list[Request]:
    requests: list[Request] = []
    for op, *args in script:
        if op == "submit":
            prompt_len, choices, max_tokens, ignore_eos = args
            params = [SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=ignore_eos)] * choices
            request = Request(params, list(range(5, 5 + prompt_len)))
            try:
                request.handle = scheduler.submit(request.prompt, params, request)
            except QueueFull:
                request.refused = True
            requests.append(request)
        elif op == "cancel":
            accepted = [r for r in requests if not r.refused and r.cancelled_at is None]
            if accepted:
                target = accepted[args[0] % len(accepted)]
                target.cancelled_at = {i: target.tokens(i) for i in range(len(target.params))}
                assert target.handle is not None
                scheduler.cancel(target.handle)
        else:
            for _ in range(args[0]):
                # A step happens only while some choice can still run; cancelled ones end without one.
                if any(r.live and r.cancelled_at is None for r in requests):
                    paced.run_step()
    paced.run_freely()
    deadline = time.monotonic() + WAIT_S
    while any(r.live for r in requests):
        assert time.monotonic() < deadline, "a request never ended"
        time.sleep(0.005)
    return requests


def check(request: Request, engine: Engine) -> None:
    if request.refused:
        assert request.events == [], "a refused request was answered"
        return
    for index, params in enumerate(request.params):
        ends = request.finals(index)
        assert len(ends) == 1, f"choice {index} ended {len(ends)} times"
        last = [e for e in request.events if e.index == index][-1]
        assert last is ends[0], "events after the end"
        end = ends[0]
        assert end.error is None, end.error
        if request.cancelled_at is None:
            assert end.finish_reason in ("stop", "length")
        else:
            # Ended by the cancel, or before it: the step under way when the cancel came may still add
            # its token (and finish), nothing after it may.
            assert end.finish_reason in ("cancelled", "stop", "length")
            assert end.tokens <= request.cancelled_at[index] + 1, "cancelled, yet it ran on"
        if end.finish_reason == "length":
            assert (
                end.tokens == params.max_tokens or len(request.prompt) + end.tokens >= engine.info.max_context
            )
        if end.finish_reason == "stop":
            assert not params.ignore_eos
            assert end.tokens <= params.max_tokens


@settings(max_examples=60, derandomize=True, database=None, deadline=None)
@given(script=scripts)
def test_every_interleaving_answers_each_choice_exactly_once(
    engine: TorchEngine, script: list[tuple]
) -> None:
    paced = PacedEngine(engine)
    scheduler = Scheduler(paced, LIMITS, paced.dispatch)
    scheduler.start()
    try:
        requests = play(scheduler, paced, script)
        for request in requests:
            check(request, engine)
        assert engine.cache.rows == 0, "KV rows left behind"
    finally:
        paced.run_freely()
        scheduler.stop()
