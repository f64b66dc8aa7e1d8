"""The waiting line by priority class: the highest class first, arrival order within a class, and the
bound on a lower class's wait (at most max_bypass later arrivals of higher classes go before it)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_runtime.access import PRIORITIES
from model_runtime.scheduler.line import WaitingLine

pytestmark = pytest.mark.unit


def drain(line: WaitingLine[str]) -> list[str]:
    return [line.pop() for _ in range(len(line))]


def test_higher_classes_go_first_and_arrival_order_holds_within_a_class() -> None:
    line: WaitingLine[str] = WaitingLine(max_bypass=8)
    line.extend(["b1", "b2"], "batch")
    line.extend(["s1"], "standard")
    line.extend(["i1", "i2"], "interactive")
    assert line.depths() == (2, 1, 2)
    assert drain(line) == ["i1", "i2", "s1", "b1", "b2"]


def test_a_lower_class_waits_behind_at_most_max_bypass_later_arrivals() -> None:
    line: WaitingLine[str] = WaitingLine(max_bypass=2)
    line.extend(["b1", "b2"], "batch")
    line.extend([f"i{n}" for n in range(1, 7)], "interactive")
    # b1 and b2 are each passed by two later interactive requests, then go.
    assert drain(line) == ["i1", "i2", "b1", "b2", "i3", "i4", "i5", "i6"]


def test_no_bypass_is_arrival_order() -> None:
    line: WaitingLine[str] = WaitingLine(max_bypass=0)
    line.extend(["b1"], "batch")
    line.extend(["i1"], "interactive")
    line.extend(["s1"], "standard")
    assert drain(line) == ["b1", "i1", "s1"]


def test_interactive_only_leaves_the_other_classes_waiting() -> None:
    line: WaitingLine[str] = WaitingLine(max_bypass=0)
    line.extend(["b1"], "batch")
    assert line.peek(classes=1) is None
    line.extend(["i1"], "interactive")
    assert line.pop(classes=1) == "i1"  # b1 is older and due, but only interactive may take this slot
    line.remove("b1")
    assert not line
    assert line.peek() is None
    with pytest.raises(IndexError):
        line.pop()


@settings(max_examples=200, deadline=None)
@given(
    max_bypass=st.integers(min_value=0, max_value=4),
    script=st.lists(st.one_of(st.sampled_from(PRIORITIES), st.just("pop")), max_size=60),
)
def test_every_wait_is_bounded_and_nothing_is_lost(max_bypass: int, script: list[str]) -> None:
    """Whatever arrives and leaves: each item leaves once; none leaves while an older one of its own class
    waits; and before an item leaves, at most max_bypass items of higher classes that arrived after it
    have left."""
    line: WaitingLine[tuple[int, int]] = WaitingLine(max_bypass)
    arrived: list[tuple[int, int]] = []  # (arrival, rank)
    left: list[tuple[int, int]] = []
    for step in script:
        if step == "pop":
            if line:
                left.append(line.pop())
        else:
            item = (len(arrived), PRIORITIES.index(step))
            arrived.append(item)
            line.extend([item], step)
    left.extend(drain(line))
    assert sorted(left) == arrived
    for position, (order, rank) in enumerate(left):
        before = left[:position]
        assert not [o for o, r in arrived if r == rank and o < order and (o, r) not in before]
        passed_by = [o for o, r in before if r < rank and o > order]
        assert len(passed_by) <= max_bypass
