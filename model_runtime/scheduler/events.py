"""What the scheduler tells the rest of the runtime, free of torch so that the HTTP process (which
never runs a model) can import it: per-step events, the ways a sequence can end badly, sinks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class SchedulerError(RuntimeError):
    """Base of the reasons a sequence ends without a normal finish. Each subclass pickles with its own
    constructor arguments, since events cross from the engine process to the HTTP process."""


def retry_after(step_seconds: float) -> float:
    """A rough time until capacity frees, for Retry-After: a typical request's worth of steps."""
    return max(1.0, round(step_seconds * 64))


class QueueFull(SchedulerError):
    def __init__(self, retry_after: float) -> None:
        super().__init__("the server is at capacity; retry later")
        self.retry_after = retry_after

    def __reduce__(self) -> tuple:
        return (QueueFull, (self.retry_after,))


class QueueTimeout(SchedulerError):
    def __init__(self, waited: float, retry_after: float) -> None:
        super().__init__(f"no batch slot became free within {waited:.0f}s; retry later")
        self.waited, self.retry_after = waited, retry_after

    def __reduce__(self) -> tuple:
        return (QueueTimeout, (self.waited, self.retry_after))


class RequestTimeout(SchedulerError):
    def __init__(self, limit: float) -> None:
        super().__init__(f"the request ran longer than the server's limit of {limit:.0f}s")
        self.limit = limit

    def __reduce__(self) -> tuple:
        return (RequestTimeout, (self.limit,))


class SchedulerClosed(SchedulerError):
    def __init__(self) -> None:
        super().__init__("the model is being unloaded")

    def __reduce__(self) -> tuple:
        return (SchedulerClosed, ())


class EngineError(RuntimeError):
    """The engine could not run a step (out of memory, a broken model, its process died)."""


class EngineStalled(EngineError):
    """The engine completed no step for too long while work waited (a wedged device or process): the
    HTTP process ends what was in flight with this, then itself, to be restarted."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the engine completed no step for {seconds:.0f}s; this replica restarts")
        self.seconds = seconds

    def __reduce__(self) -> tuple:
        return (EngineStalled, (self.seconds,))


@dataclass(frozen=True)
class TokenLogprobs:
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class Event:
    """Progress of one choice of a request, for one step."""

    index: int
    text: str
    tokens: int  # generated so far
    finish_reason: str | None = None  # "stop", "length", "cancelled"
    logprobs: tuple[TokenLogprobs, ...] = ()
    error: Exception | None = None  # a SchedulerError or EngineError: the choice ended abnormally

    @property
    def final(self) -> bool:
        return self.finish_reason is not None or self.error is not None


class Sink(Protocol):
    def deliver(self, events: list[Event]) -> None:
        """At most once per step, with that step's events for this sink; must not block."""


Dispatch = Callable[[list[tuple[Sink, list[Event]]]], None]


def deliver_here(batch: list[tuple[Sink, list[Event]]]) -> None:
    """The default dispatch: call each sink where the step ended."""
    for sink, events in batch:
        sink.deliver(events)


@dataclass(frozen=True)
class Handle:
    seq_ids: tuple[int, ...]
