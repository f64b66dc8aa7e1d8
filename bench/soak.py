"""Soak: the local fleet driven through HAProxy above its capacity for a bounded time.

Many more concurrent clients than the replicas have batch slots and queue places, each sending
completions back to back (half of them streamed). The promises checked: every request is answered
(200) or refused cleanly (429 or 503 with Retry-After), none is lost (a timeout, a reset, a stream
without its end); throughput per window stays flat; each replica's memory after warm-up stays within
a bound. `soak()` is also what the short CI version in tests/integration/test_local_fleet.py runs.

    .venv/bin/python -m bench.soak [--seconds 120] [--clients 48]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

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


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the runtime's engine process), in MB."""
    total = 0.0
    for each in [pid, *_children(pid)]:
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")) / 1024
    return total


def _children(pid: int) -> list[int]:
    try:
        found = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return found + [grand for child in found for grand in _children(child)]


async def _client(
    client: httpx.AsyncClient,
    stream: bool,
    deadline: float,
    window: float,
    started: float,
    result: SoakResult,
) -> None:
    body = {"model": "demo", "prompt": "This License", "max_tokens": 16, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    while time.monotonic() < deadline:
        try:
            tokens = await (_streamed(client, body) if stream else _plain(client, body))
        except _Refused:
            result.refused += 1
            await asyncio.sleep(0.2)  # a polite client waits a little (Retry-After is in seconds)
            continue
        except _RefusedBadly:
            result.refused += 1
            result.refused_without_retry_after += 1
            continue
        except (httpx.HTTPError, _Lost) as exc:
            result.lost.append(f"{type(exc).__name__}: {exc}"[:200])
            continue
        result.answered += 1
        slot = int((time.monotonic() - started) / window)
        while len(result.tokens_per_window) <= slot:
            result.tokens_per_window.append(0)
        result.tokens_per_window[slot] += tokens


class _Refused(Exception):
    pass


class _RefusedBadly(Exception):
    pass


class _Lost(Exception):
    pass


def _check_refusal(response: httpx.Response) -> None:
    if response.status_code in (429, 503):
        raise _Refused if "retry-after" in response.headers else _RefusedBadly
    if response.status_code != 200:
        raise _Lost(f"HTTP {response.status_code}")


async def _plain(client: httpx.AsyncClient, body: dict) -> int:
    response = await client.post("/v1/completions", json=body)
    _check_refusal(response)
    return response.json()["usage"]["completion_tokens"]


async def _streamed(client: httpx.AsyncClient, body: dict) -> int:
    async with client.stream("POST", "/v1/completions", json=body) as response:
        _check_refusal(response)
        tokens, done = 0, False
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise _Lost(f"stream error: {chunk['error']}")
                tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
        if not done:
            raise _Lost("stream ended without [DONE]")
        return tokens


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

    async def run() -> SoakResult:
        result = SoakResult(seconds)
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(
            base_url=url, headers=headers, verify=verify, timeout=httpx.Timeout(120), limits=limits
        ) as client:
            started = time.monotonic()
            deadline = started + seconds
            tasks = [
                asyncio.create_task(_client(client, i % 2 == 0, deadline, window, started, result))
                for i in range(clients)
            ]
            await asyncio.sleep(min(window, seconds / 4))  # warm-up: batches full, caches allocated
            warm = {name: rss_mb(pid) for name, pid in replicas().items()}
            await asyncio.gather(*tasks)
            result.memory_mb = {name: (warm[name], rss_mb(pid)) for name, pid in replicas().items()}
        return result

    return asyncio.run(run())


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


def main() -> None:
    from tests.support.fleet import KEY, LocalFleet
    from tests.support.models import ensure_demo_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=48)
    parser.add_argument("--replicas", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as root:
        fleet = LocalFleet(
            Path(root), ensure_demo_model(), instances=args.replicas, runtime_settings=OVERLOAD_SETTINGS
        )
        try:
            up = fleet.run("site.yml")
            if up.returncode != 0:
                raise SystemExit(f"site.yml failed:\n{up.output[-3000:]}")
            result = soak(fleet.url, KEY, fleet.tls(), fleet.replica_pids, args.clients, args.seconds)
            print(report(result, args.clients))
        finally:
            fleet.stop()


if __name__ == "__main__":
    main()
