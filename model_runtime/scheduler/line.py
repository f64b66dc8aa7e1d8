"""The line of sequences waiting for a batch slot, by priority class (model_runtime.access.PRIORITIES).

The next to go is the oldest of the highest class that has someone waiting, with one exception that
bounds a lower class's wait: a sequence that `max_bypass` sequences of higher classes, arriving after it,
have passed goes next (after any older one of the highest class). So a sequence waits for those that
were there before it and for at most max_bypass later ones; a lower class is slowed under load, never
starved. Both engines' admission loops (the builtin scheduler and the vLLM process's) take their
sequences from here.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from model_runtime.access import PRIORITIES, Priority
from model_runtime.config import SchedulerSettings

T = TypeVar("T")


def classes_open(taken: int, settings: SchedulerSettings) -> int:
    """How many classes (of PRIORITIES, from the first) may take the next batch slot while `taken` are
    held: every class, or interactive alone once only the slots kept for it are left
    (scheduler.interactive_slots)."""
    return len(PRIORITIES) if taken < settings.max_batch_size - settings.interactive_slots else 1


@dataclass(eq=False)
class _Place(Generic[T]):
    item: T
    order: int  # arrival
    rank: int  # index of its class in PRIORITIES: 0 goes first
    bypassed: int = 0


class WaitingLine(Generic[T]):
    def __init__(self, max_bypass: int) -> None:
        self.max_bypass = max_bypass
        self._lines: list[deque[_Place[T]]] = [deque() for _ in PRIORITIES]
        self._arrivals = itertools.count()

    def extend(self, items: Iterable[T], priority: Priority) -> None:
        rank = PRIORITIES.index(priority)
        self._lines[rank].extend(_Place(item, next(self._arrivals), rank) for item in items)

    def _next(self, classes: int) -> _Place[T] | None:
        heads = [line[0] for line in self._lines[:classes] if line]
        if not heads:
            return None
        # A head passed max_bypass times goes next, unless the top class's head came before it.
        due = [h for h in heads[1:] if h.bypassed >= self.max_bypass]
        return min([heads[0], *due], key=lambda h: h.order)

    def peek(self, classes: int = len(PRIORITIES)) -> T | None:
        """The next to go, of the first `classes` classes only (1: interactive); None if none waits."""
        place = self._next(classes)
        return None if place is None else place.item

    def pop(self, classes: int = len(PRIORITIES)) -> T:
        place = self._next(classes)
        if place is None:
            raise IndexError("pop from an empty waiting line")
        self._lines[place.rank].popleft()
        for line in self._lines[place.rank + 1 :]:
            for waiting in line:
                if waiting.order > place.order:
                    break  # the rest of this class came later still
                waiting.bypassed += 1
        return place.item

    def remove(self, item: T) -> None:
        for line in self._lines:
            for place in line:
                if place.item is item:
                    line.remove(place)
                    return
        raise ValueError("not waiting")

    def clear(self) -> None:
        for line in self._lines:
            line.clear()

    def depths(self) -> tuple[int, ...]:
        """How many wait in each class, in the order of PRIORITIES."""
        return tuple(len(line) for line in self._lines)

    def __len__(self) -> int:
        return sum(len(line) for line in self._lines)

    def __bool__(self) -> bool:
        return any(self._lines)

    def __iter__(self) -> Iterator[T]:
        for line in self._lines:
            for place in line:
                yield place.item
