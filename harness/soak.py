"""Soak: a fleet driven above its capacity for a bounded time, every request counted.

Many more concurrent clients than the replicas have batch slots and queue places, each sending
completions back to back (half of them streamed). The promises checked: every request is answered
(200) or refused cleanly (429 or 503 with Retry-After), none is lost (a timeout, a reset, a stream
without its end); throughput per window stays flat; each replica's memory after warm-up stays within
a bound. bench/soak.py runs it on the local fleet, tests/integration/test_local_fleet.py a short one.
"""

from __future__ import annotations

import ssl
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from harness.load import Load, Outcome, completions
from harness.processes import rss_mb

# Few batch slots and queue places, so that a laptop's worth of clients is already an overload.
OVERLOAD_SETTINGS = {"scheduler": {"max_batch_size": 4, "max_queue": 4}, "logging": {"json": True}}


@dataclass
class SoakResult:
    seconds: float
    answered: int = 0
    refused: int = 0  # 429 / 503 with Retry-After
    lost: list[str] = field(default_factory=list)  # anything else
    refused_without_retry_after: int = 0
    tokens_per_window: list[int] = field(default_factory=list)
    memory_mb: dict[str, tuple[float, float]] = field(default_factory=dict)  # replica -> (warm, end)

    @property
    def flatness(self) -> float:
        """Throughput of the second half of the run over the first, leaving out the first window
        (warm-up) and the last (cut short by the deadline)."""
        windows = self.tokens_per_window[1:-1]
        half = len(windows) // 2
        if half == 0 or sum(windows[:half]) == 0:
            return 0.0
        return statistics.mean(windows[half:]) / statistics.mean(windows[:half])

    def count(self, outcome: Outcome, started: float, window: float) -> None:
        if outcome.ok:
            self.answered += 1
            slot = int((outcome.finished - started) / window)
            while len(self.tokens_per_window) <= slot:
                self.tokens_per_window.append(0)
            self.tokens_per_window[slot] += outcome.tokens
        elif outcome.refused:
            self.refused += 1
            self.refused_without_retry_after += not outcome.retry_after
        else:
            self.lost.append(outcome.error[:200])


def soak(
    url: str,
    key: str,
    verify: ssl.SSLContext | bool,
    replicas: Callable[[], dict[str, int]],
    clients: int = 48,
    seconds: float = 60,
    window: float = 5,
) -> SoakResult:
    """Drive `url` with `clients` concurrent clients for `seconds` (bounded: no client starts a request
    after the deadline). replicas() maps each replica's name to its process ID, for memory."""
    load = Load(
        url, completions("demo", max_tokens=16), clients, key, verify, seconds=seconds, timeout_s=120
    ).start()
    try:
        time.sleep(min(window, seconds / 4))  # warm-up: batches full, caches allocated
        warm = {name: rss_mb(pid) for name, pid in replicas().items()}
        load.join()
    finally:
        load.stop()
    result = SoakResult(seconds)
    for outcome in load.outcomes:
        result.count(outcome, load.started, window)
    result.memory_mb = {name: (warm[name], rss_mb(pid)) for name, pid in replicas().items()}
    return result


def report(result: SoakResult, clients: int) -> str:
    lines = [
        f"soak: {clients} clients for {result.seconds:.0f} s through HAProxy",
        f"answered {result.answered}, refused {result.refused} (429/503 with Retry-After; "
        f"{result.refused_without_retry_after} without), lost {len(result.lost)}",
        f"tokens per window: {result.tokens_per_window} (second half / first half: {result.flatness:.2f})",
    ]
    for name, (warm, end) in sorted(result.memory_mb.items()):
        lines.append(
            f"memory {name}: {warm:.0f} MB after warm-up, {end:.0f} MB at the end ({end / warm:.2f})"
        )
    lines += [f"  lost: {reason}" for reason in result.lost[:5]]
    return "\n".join(lines)
