"""How many replicas the fleet wants, from what it sees: pure, so that every rule can be tested on a
sequence of readings without a fleet.

Out: when requests wait (queued sequences per replica above a threshold), are refused (the queue is
full), or the time to first token's p90 is above its target, add the replicas that would take the
waiting sequences (at least one), once the last change's cooldown has passed.
In: only when the whole load (running and waiting) would fit on one replica fewer with room to spare
(at most `fill_in` of their batch slots), has done so for `stable_in_s`, and the longer scale-in
cooldown has passed; one replica at a time.
The gap between the two is the hysteresis: a load that made the fleet grow cannot make it shrink back
(it would fill the smaller fleet beyond `fill_in` of its slots, below the point that made it grow), so
a steady load near a threshold never flaps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class Signals:
    """What Prometheus says of the fleet, averaged over the autoscaler's window."""

    replicas: int  # serving replicas (the instances Prometheus scrapes)
    queued: float  # sequences waiting for a batch slot, fleet-wide
    running: float  # sequences in running batches, fleet-wide
    refused_per_s: float  # requests refused because the queue was full (429), fleet-wide
    ttft_p90_s: float | None  # time to first token, p90; None when no request started in the window


@dataclass(frozen=True)
class Policy:
    min_replicas: int
    max_replicas: int
    capacity_per_replica: int  # sequences one replica runs at once (its scheduler.max_batch_size)
    queue_per_replica_out: float = 1.0
    ttft_p90_out_s: float = 2.0
    fill_in: float = 0.5
    cooldown_out_s: float = 60.0
    cooldown_in_s: float = 300.0
    stable_in_s: float = 120.0
    max_step_out: int = 4

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.min_replicas <= self.max_replicas:
            problems.append("min_replicas and max_replicas: need 1 <= min_replicas <= max_replicas")
        if self.capacity_per_replica < 1:
            problems.append("capacity_per_replica: must be at least 1")
        if not 0 < self.fill_in < 1:
            problems.append("fill_in: must be between 0 and 1 (exclusive): it is the hysteresis")
        if self.max_step_out < 1:
            problems.append("max_step_out: must be at least 1")
        for f in fields(self):
            if f.name.endswith(("_s", "_out")) and getattr(self, f.name) < 0:
                problems.append(f"{f.name}: must not be negative")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class Memory:
    """What the policy remembers between two readings."""

    last_change_s: float | None = None  # when the last scale run it asked for finished
    calm_since_s: float | None = None  # since when the load would fit on one replica fewer


@dataclass(frozen=True)
class Decision:
    action: str  # "out", "in" or "hold"
    replicas: int  # what the fleet has now
    wanted: int  # what it should have
    reason: str
    inputs: dict[str, float | int | None] = field(default_factory=dict)


def decide(policy: Policy, seen: Signals, memory: Memory, now_s: float) -> Decision:
    """The decision for one reading; updates memory's calm period (the caller records changes)."""
    inputs = {
        "replicas": seen.replicas,
        "queued": round(seen.queued, 3),
        "running": round(seen.running, 3),
        "refused_per_s": round(seen.refused_per_s, 3),
        "ttft_p90_s": None if seen.ttft_p90_s is None else round(seen.ttft_p90_s, 3),
    }

    def hold(reason: str) -> Decision:
        return Decision("hold", seen.replicas, seen.replicas, reason, inputs)

    def change(wanted: int, reason: str) -> Decision:
        return Decision("out" if wanted > seen.replicas else "in", seen.replicas, wanted, reason, inputs)

    if seen.replicas < policy.min_replicas or seen.replicas > policy.max_replicas:
        memory.calm_since_s = None
        bounded = min(max(seen.replicas, policy.min_replicas), policy.max_replicas)
        return change(
            bounded, f"{seen.replicas} replicas is outside {policy.min_replicas}..{policy.max_replicas}"
        )

    since_change = math.inf if memory.last_change_s is None else now_s - memory.last_change_s
    queue_per_replica = seen.queued / max(seen.replicas, 1)
    pressure = [
        why
        for why, present in (
            (f"{queue_per_replica:.2f} queued per replica > {policy.queue_per_replica_out}",
             queue_per_replica > policy.queue_per_replica_out),
            (f"{seen.refused_per_s:.2f} refused/s", seen.refused_per_s > 0),
            (f"ttft p90 {seen.ttft_p90_s}s > {policy.ttft_p90_out_s}s",
             seen.ttft_p90_s is not None and seen.ttft_p90_s > policy.ttft_p90_out_s),
        )
        if present
    ]  # fmt: skip
    if pressure:
        memory.calm_since_s = None
        why = ", ".join(pressure)
        if seen.replicas >= policy.max_replicas:
            return hold(f"at the maximum ({policy.max_replicas}): {why}")
        if since_change < policy.cooldown_out_s:
            return hold(f"cooling down ({since_change:.0f}s of {policy.cooldown_out_s:.0f}s): {why}")
        # Each added replica takes a batch of the waiting sequences; refusals say more wait unseen.
        step = max(1, math.ceil(seen.queued / policy.capacity_per_replica))
        wanted = min(policy.max_replicas, seen.replicas + min(step, policy.max_step_out))
        return change(wanted, why)

    load = seen.queued + seen.running
    room_after_in = policy.fill_in * policy.capacity_per_replica * (seen.replicas - 1)
    ttft_calm = seen.ttft_p90_s is None or seen.ttft_p90_s <= policy.ttft_p90_out_s
    if seen.replicas > policy.min_replicas and load <= room_after_in and ttft_calm:
        if memory.calm_since_s is None:
            memory.calm_since_s = now_s
        calm_for = now_s - memory.calm_since_s
        why = f"load {load:.2f} fits {seen.replicas - 1} replicas within {policy.fill_in:.0%} of their slots"
        if calm_for < policy.stable_in_s:
            return hold(f"{why} for {calm_for:.0f}s of {policy.stable_in_s:.0f}s")
        if since_change < policy.cooldown_in_s:
            return hold(f"{why}; cooling down ({since_change:.0f}s of {policy.cooldown_in_s:.0f}s)")
        memory.calm_since_s = None
        return change(seen.replicas - 1, why)

    memory.calm_since_s = None
    return hold("within the band")
