"""The scheduler over a real engine: joins between steps, bounded queue, deadlines, cancellation,
engine failure, shutdown; every sequence ends exactly once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from model_runtime.config import ModelSettings, SchedulerSettings
from model_runtime.engine.torch_engine import TorchEngine, load_torch_engine
from model_runtime.scheduler.core import Scheduler
from model_runtime.scheduler.events import (
    EngineError,
    Event,
    QueueFull,
    QueueTimeout,
    RequestTimeout,
    SchedulerClosed,
    deliver_here,
)
from model_runtime.scheduler.params import SamplingParams

pytestmark = pytest.mark.unit


class RecordingSink:
    def __init__(self, choices: int = 1) -> None:
        self.events: list[Event] = []
        self.remaining = choices
        self.finished = threading.Event()
        self.started = threading.Event()

    def deliver(self, events: list[Event]) -> None:
        self.events.extend(events)
        self.started.set()
        self.remaining -= sum(1 for e in events if e.finish_reason or e.error)
        if self.remaining <= 0:
            self.finished.set()

    def wait(self, timeout: float = 60) -> RecordingSink:
        assert self.finished.wait(timeout), "sequence never finished"
        return self

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events)

    @property
    def final(self) -> Event:
        ends = [e for e in self.events if e.finish_reason or e.error]
        assert len(ends) == 1, f"expected exactly one final event, got {ends}"
        return ends[0]


def make(folder: Path, **settings: object) -> Scheduler:
    """A started scheduler that also records its (waiting, running) load after every step."""
    config = SchedulerSettings(**settings)
    engine = load_torch_engine(ModelSettings(path=str(folder)), max_batch=config.max_batch_size)
    loads: list[tuple[int, int]] = []

    def dispatch(batch: list) -> None:
        loads.append(scheduler.load)
        deliver_here(batch)

    scheduler = Scheduler(engine, config, dispatch)
    scheduler.loads = loads
    scheduler.start()
    return scheduler


def long(tokens: int = 300) -> SamplingParams:
    return SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)


@pytest.fixture
def scheduler(tiny_llama: Path):
    s = make(tiny_llama)
    yield s
    s.stop()


def test_short_request_joins_and_leaves_while_a_long_one_runs(scheduler: Scheduler) -> None:
    slow, quick = RecordingSink(), RecordingSink()
    scheduler.submit([5, 6, 7], [long(400)], slow)
    assert slow.started.wait(30)
    scheduler.submit([8, 9], [long(5)], quick)
    quick.wait()
    assert not slow.finished.is_set(), "the short request waited for the long one"
    slow.wait()
    assert quick.final.finish_reason == "length"
    assert quick.final.tokens == 5
    assert slow.final.finish_reason == "length"
    assert slow.final.tokens == 400
    assert ((0, 0, 0), 2) in scheduler.loads  # they shared decode steps
    assert scheduler.engine.cache.rows == 0


def test_n_choices_and_exactly_one_end_each(scheduler: Scheduler) -> None:
    sink = RecordingSink(choices=3)
    params = [SamplingParams(max_tokens=8 + i, temperature=1.0, seed=i, ignore_eos=True) for i in range(3)]
    scheduler.submit([5, 6], params, sink)
    sink.wait()
    ends = {e.index: e for e in sink.events if e.finish_reason}
    assert {i: e.tokens for i, e in ends.items()} == {0: 8, 1: 9, 2: 10}


def test_seeded_sampling_is_reproducible(scheduler: Scheduler) -> None:
    def run() -> str:
        sink = RecordingSink()
        scheduler.submit([5, 6], [SamplingParams(max_tokens=20, temperature=1.0, seed=42)], sink)
        return sink.wait().text

    assert run() == run()


def test_full_queue_refuses_and_retry_after_is_given(tiny_llama: Path) -> None:
    s = make(tiny_llama, max_batch_size=1, max_queue=1)
    try:
        running, waiting = RecordingSink(), RecordingSink()
        s.submit([5], [long(400)], running)
        assert running.started.wait(30)
        s.submit([6], [long(3)], waiting)
        with pytest.raises(QueueFull) as refused:
            s.submit([7], [long(3)], RecordingSink())
        assert refused.value.retry_after >= 1
        running.wait()
        waiting.wait()
        assert waiting.final.finish_reason == "length"
    finally:
        s.stop()


class OrderedSink(RecordingSink):
    """Notes its name in `admitted` on its first event: with one batch slot, the order of admission."""

    def __init__(self, name: str, admitted: list[str]) -> None:
        super().__init__()
        self.name, self.admitted = name, admitted

    def deliver(self, events: list[Event]) -> None:
        if not self.started.is_set():
            self.admitted.append(self.name)
        super().deliver(events)


@pytest.mark.parametrize(
    ("max_bypass", "order"),
    [
        (8, ["i1", "i2", "b1", "b2", "b3"]),  # interactive ahead of the batch requests waiting before it
        (1, ["i1", "b1", "b2", "b3", "i2"]),  # each batch request passed by at most one later arrival
    ],
)
def test_interactive_requests_are_admitted_ahead_of_waiting_batch_requests(
    tiny_llama: Path, max_bypass: int, order: list[str]
) -> None:
    s = make(tiny_llama, max_batch_size=1, max_queue=8, priority_max_bypass=max_bypass)
    try:
        admitted: list[str] = []
        blocker = OrderedSink("blocker", admitted)
        handle = s.submit([5], [long(450)], blocker, "batch")
        assert blocker.started.wait(30)
        sinks = [OrderedSink(f"b{n}", admitted) for n in (1, 2, 3)]
        for sink in sinks:
            s.submit([6, 7], [long(4)], sink, "batch")
        sinks += [OrderedSink(f"i{n}", admitted) for n in (1, 2)]
        for sink in sinks[3:]:
            s.submit([8, 9], [long(4)], sink, "interactive")
        assert s.load == ((2, 0, 3), 1)
        s.cancel(handle)  # the one slot frees with everyone waiting
        for sink in sinks:
            assert sink.wait().final.finish_reason == "length"  # batch requests still complete
        assert admitted == ["blocker", *order]
    finally:
        s.stop()


def test_interactive_slots_are_kept_from_the_other_classes(tiny_llama: Path) -> None:
    s = make(tiny_llama, max_batch_size=2, max_queue=8, interactive_slots=1)
    try:
        running, waiting, interactive = RecordingSink(), RecordingSink(), RecordingSink()
        s.submit([5], [long(450)], running, "standard")
        assert running.started.wait(30)
        s.submit([6], [long(4)], waiting, "batch")
        s.submit([7], [long(4)], interactive, "interactive")
        interactive.wait()  # took the kept slot at once
        assert not waiting.started.is_set(), "a batch request took the slot kept for interactive ones"
        running.wait()
        waiting.wait()
    finally:
        s.stop()


def test_cancel_ends_a_running_sequence_and_frees_its_row(scheduler: Scheduler) -> None:
    sink = RecordingSink()
    handle = scheduler.submit([5, 6], [long(450)], sink)
    assert sink.started.wait(30)
    scheduler.cancel(handle)
    sink.wait()
    assert sink.final.finish_reason == "cancelled"
    assert sink.final.tokens < 450
    follow_up = RecordingSink()
    scheduler.submit([5], [long(3)], follow_up)
    assert follow_up.wait().final.finish_reason == "length"
    assert scheduler.engine.cache.rows == 0


def test_queue_and_request_deadlines(medium_llama: Path) -> None:
    s = make(medium_llama, max_batch_size=1, queue_timeout_s=0.05, request_timeout_s=0.3)
    try:
        first, second = RecordingSink(), RecordingSink()
        s.submit([5], [long(480)], first)
        s.submit([6], [long(3)], second)
        assert isinstance(second.wait().final.error, QueueTimeout)
        assert isinstance(first.wait().final.error, RequestTimeout)
        assert first.final.tokens < 480
    finally:
        s.stop()


class FailingOnce(TorchEngine):
    failures = 1

    def step(self, decode_ids, decode_tokens, new_ids, new_prompts):
        if decode_ids and self.failures:
            self.failures -= 1
            raise RuntimeError("CUDA out of memory (injected)")
        return super().step(decode_ids, decode_tokens, new_ids, new_prompts)


def test_engine_failure_ends_the_batch_and_serving_continues(tiny_llama: Path) -> None:
    engine = load_torch_engine(ModelSettings(path=str(tiny_llama)), max_batch=4)
    engine.__class__ = FailingOnce
    s = Scheduler(engine, SchedulerSettings())
    s.start()
    try:
        victims = RecordingSink(choices=2)
        s.submit([5, 6], [long(10), long(10)], victims)
        victims.wait()
        errors = [e.error for e in victims.events if e.error]
        assert len(errors) == 2
        assert all(isinstance(e, EngineError) for e in errors)
        after = RecordingSink()
        s.submit([5, 6], [long(4)], after)
        assert after.wait().final.finish_reason == "length"
    finally:
        s.stop()


def test_stop_ends_waiting_and_running_with_scheduler_closed(tiny_llama: Path) -> None:
    s = make(tiny_llama, max_batch_size=1)
    running, waiting = RecordingSink(), RecordingSink()
    s.submit([5], [long(480)], running)
    assert running.started.wait(30)
    s.submit([6], [long(3)], waiting)
    s.stop()
    assert isinstance(running.wait().final.error, SchedulerClosed)
    assert isinstance(waiting.wait().final.error, SchedulerClosed)
    with pytest.raises(SchedulerClosed):
        s.submit([7], [long(3)], RecordingSink())
