"""The cloud group's decisions behind the metal load balancer: out only with metal at its maximum and
requests waiting there (at once, by the instances the queue needs, then not within the cooldown), in
one instance at a time once the overflow would fit after a calm period, the group's bounds kept, and
no flapping under any steady load (a property over a model of metal, HAProxy's overflow and the cloud)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_ops.autoscale.policy import BurstPolicy, CloudGroup, Memory, Policy, Signals, decide_burst

METAL = Policy(min_replicas=1, max_replicas=2, capacity_per_replica=4)
BURST = BurstPolicy(capacity_per_instance=4, cooldown_out_s=300, cooldown_in_s=120, stable_in_s=60)
EMPTY = CloudGroup(desired=0, min_size=0, max_size=3)


def seen(replicas: int = 2, queued: float = 0, running: float = 8, burst: float = 0) -> Signals:
    return Signals(replicas, queued, running, 0.0, None, burst_running=burst)


def test_a_queue_on_metal_at_its_maximum_raises_the_group_by_what_it_needs() -> None:
    decision = decide_burst(METAL, BURST, seen(queued=6), EMPTY, Memory(), 0)
    assert (decision.action, decision.replicas, decision.wanted) == ("out", 0, 2)  # 6 waiting: 2 of 4
    assert decision.reason.startswith("cloud: metal at its maximum (2)")
    assert decision.inputs["cloud_desired"] == 0


def test_metal_below_its_maximum_never_bursts() -> None:
    decision = decide_burst(METAL, BURST, seen(replicas=1, queued=6), EMPTY, Memory(), 0)
    assert decision.action == "hold"


def test_no_second_raise_within_the_cooldown_nor_past_the_group_maximum() -> None:
    one = CloudGroup(desired=1, min_size=0, max_size=3)
    assert decide_burst(METAL, BURST, seen(queued=6), one, Memory(last_change_s=0), 100).action == "hold"
    assert decide_burst(METAL, BURST, seen(queued=6), one, Memory(last_change_s=0), 301).wanted == 3
    full = CloudGroup(desired=3, min_size=0, max_size=3)
    held = decide_burst(METAL, BURST, seen(queued=40), full, Memory(), 0)
    assert (held.action, held.reason.split(":")[1].strip()) == ("hold", "at the maximum (3)")


def test_the_group_shrinks_one_instance_at_a_time_after_a_calm_period() -> None:
    memory, group, moves = Memory(last_change_s=-1000), CloudGroup(desired=2, min_size=0, max_size=3), []
    for now in range(0, 600, 10):
        decision = decide_burst(METAL, BURST, seen(running=3), group, memory, now)
        if decision.action != "hold":
            moves.append((now, decision.wanted))
            memory.last_change_s, group = now, CloudGroup(decision.wanted, 0, 3)
    assert moves == [(60, 1), (180, 0)]  # 60 s calm; then the scale-in cooldown (120 s)


def test_overflow_still_served_by_the_cloud_keeps_it() -> None:
    group = CloudGroup(desired=2, min_size=0, max_size=3)

    def calm() -> Memory:
        return Memory(last_change_s=-1000, calm_since_s=-1000)

    assert decide_burst(METAL, BURST, seen(burst=3), group, calm(), 0).action == "hold"  # 3 > 50% of 4
    assert decide_burst(METAL, BURST, seen(burst=1), group, calm(), 0).wanted == 1


def test_a_group_outside_its_bounds_is_brought_back() -> None:
    decision = decide_burst(METAL, BURST, seen(), CloudGroup(desired=5, min_size=1, max_size=3), Memory(), 0)
    assert (decision.action, decision.wanted) == ("in", 3)


def overflow_model(load: float, metal: int, capacity: int, queue: int, desired: int, cloud: int) -> Signals:
    """Metal at its maximum under `load` concurrent sequences: it runs `capacity` each, HAProxy sends
    what it cannot run to the cloud's `desired` instances (`cloud` each), and the rest waits on metal
    (`queue` places each; beyond those, refused)."""
    running = min(load, metal * capacity)
    burst = min(load - running, desired * cloud)
    waiting = load - running - burst
    queued = min(waiting, metal * queue)
    return Signals(metal, queued, running, 1.0 if waiting > queued else 0.0, None, burst_running=burst)


@settings(max_examples=300, deadline=None)
@given(
    load=st.floats(min_value=0, max_value=120),
    start=st.integers(min_value=0, max_value=6),
    cloud=st.integers(min_value=1, max_value=16),
    fill_in=st.floats(min_value=0.05, max_value=0.95),
    queue_out=st.floats(min_value=0, max_value=4),
)
def test_a_steady_load_never_flaps_the_cloud(
    load: float, start: int, cloud: int, fill_in: float, queue_out: float
) -> None:
    """Whatever the steady load and thresholds, the group moves one way only, then stays."""
    metal = Policy(min_replicas=1, max_replicas=2, capacity_per_replica=4, queue_per_replica_out=queue_out)
    burst = BurstPolicy(capacity_per_instance=cloud, fill_in=fill_in, cooldown_out_s=60, cooldown_in_s=60,
                        stable_in_s=60)  # fmt: skip
    memory, desired, moves = Memory(), start, []
    for now in range(0, 3600, 15):
        signals = overflow_model(load, 2, 4, 4, desired, cloud)
        decision = decide_burst(metal, burst, signals, CloudGroup(desired, 0, 6), memory, now)
        if decision.action != "hold":
            memory.last_change_s, desired = now, decision.wanted
            moves.append(decision.action)
    assert len(set(moves)) <= 1, moves
    final = overflow_model(load, 2, 4, 4, desired, cloud)
    assert desired == 6 or (final.queued / 2 <= queue_out and final.refused_per_s == 0)
    assert desired == 0 or load - 8 > fill_in * cloud * (desired - 1)
