"""The autoscaler's decisions on sequences of readings: out on a queue, refusals or a slow first token
(at once, then not again within the cooldown), in only after a calm period and one replica at a time,
bounds kept, and no flapping under any steady load (a property over a simple model of a fleet)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_ops.autoscale.policy import Decision, Memory, Policy, Signals, decide

POLICY = Policy(min_replicas=1, max_replicas=4, capacity_per_replica=4, cooldown_out_s=60, cooldown_in_s=120,
                stable_in_s=60)  # fmt: skip
IDLE = Signals(replicas=2, queued=0, running=0, refused_per_s=0, ttft_p90_s=None)


def reading(
    replicas: int, queued: float = 0, running: float = 0, refused: float = 0, ttft: float | None = None
) -> Signals:
    return Signals(replicas, queued, running, refused, ttft)


def run(
    policy: Policy, readings: list[tuple[float, Signals]], memory: Memory | None = None
) -> list[Decision]:
    """Decisions for readings at their times, each change recorded as done at once."""
    memory = memory or Memory()
    decisions = []
    for now, seen in readings:
        decision = decide(policy, seen, memory, now)
        if decision.action != "hold":
            memory.last_change_s = now
        decisions.append(decision)
    return decisions


def test_a_queue_adds_the_replicas_it_needs_at_once() -> None:
    decision = decide(POLICY, reading(1, queued=6, running=4), Memory(), 0)
    assert (decision.action, decision.wanted) == ("out", 3)  # 6 waiting: two more batches of 4
    assert decision.inputs["queued"] == 6
    assert "queued per replica" in decision.reason


@pytest.mark.parametrize("seen", [reading(1, running=4, refused=0.5), reading(1, running=2, ttft=3.0)])
def test_refusals_or_a_slow_first_token_add_one(seen: Signals) -> None:
    assert decide(POLICY, seen, Memory(), 0).wanted == 2


def test_no_second_step_out_within_the_cooldown() -> None:
    overloaded = reading(2, queued=8, running=8)
    decisions = run(POLICY, [(0, reading(1, queued=8, running=4)), (30, overloaded), (61, overloaded)])
    assert [d.action for d in decisions] == ["out", "hold", "out"]
    assert decisions[1].reason.startswith("cooling down (30s of 60s)")


def test_the_maximum_holds_and_says_so() -> None:
    decision = decide(POLICY, reading(4, queued=40, running=16, refused=3), Memory(), 0)
    assert decision.action == "hold"
    assert decision.reason.startswith("at the maximum (4)")


def test_scale_in_waits_for_a_calm_period_then_removes_one() -> None:
    calm = reading(3, running=2)  # fits 2 replicas at 25% of their 8 slots
    decisions = run(POLICY, [(t, calm) for t in range(0, 200, 10)], Memory(last_change_s=-1000))
    actions = [d.action for d in decisions]
    assert actions[:6] == ["hold"] * 6  # calm for 0..50 s of 60 s
    assert actions[6] == "in"
    assert decisions[6].wanted == 2
    # The same reading again (the fleet did not shrink here): the next step waits for the scale-in
    # cooldown (120 s after 60 s), the calm period having started anew.
    assert [t for t, action in zip(range(0, 200, 10), actions, strict=True) if action == "in"] == [60, 180]
    assert decisions[13].reason.endswith("cooling down (70s of 120s)")  # calm again since 70 s


def test_a_load_that_would_crowd_one_replica_fewer_keeps_them() -> None:
    decision = decide(POLICY, reading(2, running=3), Memory(last_change_s=-1000, calm_since_s=-1000), 0)
    assert decision.action == "hold"  # 3 sequences would fill one replica's 4 slots beyond 50%
    assert decision.reason == "within the band"


def test_outside_the_bounds_comes_back_inside() -> None:
    assert decide(POLICY, reading(6), Memory(), 0).wanted == 4
    assert decide(POLICY, reading(0, queued=1), Memory(), 0).wanted == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_replicas", 0),
        ("max_replicas", 0),
        ("capacity_per_replica", 0),
        ("fill_in", 1.0),
        ("cooldown_in_s", -1),
    ],
)
def test_a_bad_policy_names_its_field(field: str, value: float) -> None:
    arguments = {"min_replicas": 1, "max_replicas": 3, "capacity_per_replica": 4, field: value}
    with pytest.raises(ValueError, match=field):
        Policy(**arguments)


def fleet_model(load: float, replicas: int, capacity: int, queue: int) -> Signals:
    """A fleet under `load` concurrent sequences: each replica runs `capacity`, queues `queue` more, and
    refuses the rest."""
    running = min(load, replicas * capacity)
    queued = min(load - running, replicas * queue)
    refused = 1.0 if load > replicas * (capacity + queue) else 0.0
    return Signals(replicas, queued, running, refused, None)


@settings(max_examples=300, deadline=None)
@given(
    load=st.floats(min_value=0, max_value=80),
    start=st.integers(min_value=1, max_value=8),
    capacity=st.integers(min_value=1, max_value=16),
    queue=st.integers(min_value=0, max_value=16),
    fill_in=st.floats(min_value=0.05, max_value=0.95),
    queue_out=st.floats(min_value=0, max_value=4),
)
def test_a_steady_load_never_flaps(
    load: float, start: int, capacity: int, queue: int, fill_in: float, queue_out: float
) -> None:
    """Whatever the steady load and thresholds, the replica count moves one way only, then stays."""
    policy = Policy(min_replicas=1, max_replicas=8, capacity_per_replica=capacity,
                    queue_per_replica_out=queue_out, fill_in=fill_in, cooldown_out_s=30, cooldown_in_s=60,
                    stable_in_s=60)  # fmt: skip
    memory, replicas, moves = Memory(), start, []
    for now in range(0, 3600, 15):
        decision = decide(policy, fleet_model(load, replicas, capacity, queue), memory, now)
        if decision.action != "hold":
            memory.last_change_s, replicas = now, decision.wanted
            moves.append(decision.action)
    assert len(set(moves)) <= 1, moves
    # And it settles where the load runs without waiting beyond the threshold (or at a bound).
    final = fleet_model(load, replicas, capacity, queue)
    assert replicas == 8 or (final.queued / replicas <= queue_out and final.refused_per_s == 0)
    # Nor does it keep a replica the load would leave idle beyond the hysteresis.
    assert replicas == 1 or load > fill_in * capacity * (replicas - 1)
