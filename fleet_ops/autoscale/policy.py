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
Burst (decide_burst): once the metal fleet is at its maximum and requests still wait, the cloud group
grows by the instances that would take them; it shrinks, one instance at a time, once what it serves
(with what waits on metal) would fit on one instance fewer within `fill_in` of their slots for
`stable_in_s`. While the cloud is above its minimum, metal does not scale in: the cloud drains first.
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
    burst_running: float = 0.0  # requests in flight at the burst backend (the cloud), at the load balancers


def _refuse(policy: Policy | BurstPolicy, capacity: str, problems: list[str]) -> None:
    """A policy's checks, every problem named by its field: the batch slots, the hysteresis, the step,
    and no negative time or threshold."""
    if getattr(policy, capacity) < 1:
        problems.append(f"{capacity}: must be at least 1")
    if not 0 < policy.fill_in < 1:
        problems.append("fill_in: must be between 0 and 1 (exclusive): it is the hysteresis")
    if policy.max_step_out < 1:
        problems.append("max_step_out: must be at least 1")
    for f in fields(policy):
        if f.name.endswith(("_s", "_out")) and getattr(policy, f.name) < 0:
            problems.append(f"{f.name}: must not be negative")
    if problems:
        raise ValueError("; ".join(problems))


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
        bounds = [] if 1 <= self.min_replicas <= self.max_replicas else [
            "min_replicas and max_replicas: need 1 <= min_replicas <= max_replicas"
        ]  # fmt: skip
        _refuse(self, "capacity_per_replica", bounds)


@dataclass(frozen=True)
class BurstPolicy:
    """The cloud group behind the metal load balancer: its bounds are the group's own (min/max size)."""

    capacity_per_instance: int  # sequences one cloud instance runs at once
    fill_in: float = 0.5
    # A cloud instance takes minutes to boot and serve: no second raise before the first could help.
    cooldown_out_s: float = 300.0
    cooldown_in_s: float = 300.0
    stable_in_s: float = 120.0
    max_step_out: int = 4

    def __post_init__(self) -> None:
        _refuse(self, "capacity_per_instance", [])


@dataclass(frozen=True)
class CloudGroup:
    """The cloud group as AWS says it is now."""

    desired: int
    min_size: int
    max_size: int


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


def _inputs(seen: Signals) -> dict[str, float | int | None]:
    return {
        "replicas": seen.replicas,
        "queued": round(seen.queued, 3),
        "running": round(seen.running, 3),
        "refused_per_s": round(seen.refused_per_s, 3),
        "ttft_p90_s": None if seen.ttft_p90_s is None else round(seen.ttft_p90_s, 3),
        "burst_running": round(seen.burst_running, 3),
    }


def _pressure(policy: Policy, seen: Signals) -> list[str]:
    """Why requests wait on metal now (empty: they do not)."""
    queue_per_replica = seen.queued / max(seen.replicas, 1)
    return [
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


def _since(memory: Memory, now_s: float) -> float:
    return math.inf if memory.last_change_s is None else now_s - memory.last_change_s


def _out_blocked(current: int, maximum: int, since_change: float, cooldown_out_s: float) -> str:
    """Why a group under pressure cannot grow now ("" when it can)."""
    if current >= maximum:
        return f"at the maximum ({maximum})"
    if since_change < cooldown_out_s:
        return f"cooling down ({since_change:.0f}s of {cooldown_out_s:.0f}s)"
    return ""


def _in_blocked(
    memory: Memory, now_s: float, since_change: float, stable_in_s: float, cooldown_in_s: float
) -> str:
    """For a group whose load would fit one member fewer: what it still waits for ("" when it may
    shrink now). The calm period starts at the first such reading; a shrink ends it."""
    if memory.calm_since_s is None:
        memory.calm_since_s = now_s
    calm_for = now_s - memory.calm_since_s
    if calm_for < stable_in_s:
        return f" for {calm_for:.0f}s of {stable_in_s:.0f}s"
    if since_change < cooldown_in_s:
        return f"; cooling down ({since_change:.0f}s of {cooldown_in_s:.0f}s)"
    memory.calm_since_s = None
    return ""


def decide(policy: Policy, seen: Signals, memory: Memory, now_s: float) -> Decision:
    """The decision for one reading; updates memory's calm period (the caller records changes)."""
    inputs = _inputs(seen)

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

    since_change = _since(memory, now_s)
    pressure = _pressure(policy, seen)
    if pressure:
        memory.calm_since_s = None
        why = ", ".join(pressure)
        blocked = _out_blocked(seen.replicas, policy.max_replicas, since_change, policy.cooldown_out_s)
        if blocked:
            return hold(f"{blocked}: {why}")
        # Each added replica takes a batch of the waiting sequences; refusals say more wait unseen.
        step = max(1, math.ceil(seen.queued / policy.capacity_per_replica))
        wanted = min(policy.max_replicas, seen.replicas + min(step, policy.max_step_out))
        return change(wanted, why)

    load = seen.queued + seen.running
    room_after_in = policy.fill_in * policy.capacity_per_replica * (seen.replicas - 1)
    ttft_calm = seen.ttft_p90_s is None or seen.ttft_p90_s <= policy.ttft_p90_out_s
    if seen.replicas > policy.min_replicas and load <= room_after_in and ttft_calm:
        why = f"load {load:.2f} fits {seen.replicas - 1} replicas within {policy.fill_in:.0%} of their slots"
        waiting = _in_blocked(memory, now_s, since_change, policy.stable_in_s, policy.cooldown_in_s)
        return hold(f"{why}{waiting}") if waiting else change(seen.replicas - 1, why)

    memory.calm_since_s = None
    return hold("within the band")


def decide_burst(
    policy: Policy, burst: BurstPolicy, seen: Signals, cloud: CloudGroup, memory: Memory, now_s: float
) -> Decision:
    """The cloud group's decision for one reading (replicas and wanted are its desired capacity); memory
    is the cloud's own. Out only with metal at its maximum and requests waiting there."""
    inputs = {**_inputs(seen), "cloud_desired": cloud.desired}

    def hold(reason: str) -> Decision:
        return Decision("hold", cloud.desired, cloud.desired, f"cloud: {reason}", inputs)

    def change(wanted: int, reason: str) -> Decision:
        action = "out" if wanted > cloud.desired else "in"
        return Decision(action, cloud.desired, wanted, f"cloud: {reason}", inputs)

    if not cloud.min_size <= cloud.desired <= cloud.max_size:
        memory.calm_since_s = None
        bounded = min(max(cloud.desired, cloud.min_size), cloud.max_size)
        return change(bounded, f"{cloud.desired} instances is outside {cloud.min_size}..{cloud.max_size}")

    since_change = _since(memory, now_s)
    pressure = _pressure(policy, seen)
    if pressure and seen.replicas >= policy.max_replicas:
        memory.calm_since_s = None
        why = f"metal at its maximum ({policy.max_replicas}): {', '.join(pressure)}"
        blocked = _out_blocked(cloud.desired, cloud.max_size, since_change, burst.cooldown_out_s)
        if blocked:
            return hold(f"{blocked}: {why}")
        step = max(1, math.ceil(seen.queued / burst.capacity_per_instance))
        return change(min(cloud.max_size, cloud.desired + min(step, burst.max_step_out)), why)

    overflow = seen.queued + seen.burst_running
    room_after_in = burst.fill_in * burst.capacity_per_instance * (cloud.desired - 1)
    if cloud.desired > cloud.min_size and not pressure and overflow <= room_after_in:
        why = (
            f"overflow {overflow:.2f} fits {cloud.desired - 1} instances within {burst.fill_in:.0%} "
            "of their slots"
        )
        waiting = _in_blocked(memory, now_s, since_change, burst.stable_in_s, burst.cooldown_in_s)
        return hold(f"{why}{waiting}") if waiting else change(cloud.desired - 1, why)

    memory.calm_since_s = None
    return hold("within the band")
