"""A small closed-loop load generator: N concurrent clients streaming completions over HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class LoadResult:
    requests: int
    tokens: int
    seconds: float
    failed: int

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def _stream_one(client: httpx.Client, body: dict) -> int:
    """Send one streamed completion; return its completion tokens from the final usage chunk. Reads
    the stream as raw bytes and parses only the end: the client should cost the machine little, since
    it shares the CPUs with the server it measures."""
    tail = b""
    with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            tail = (tail + chunk)[-8192:]
    found = max(tail.rfind(b'"usage":{'), tail.rfind(b'"usage": {'))
    if found < 0:
        raise httpx.HTTPError("the stream ended without a usage chunk")
    start = tail.rfind(b"data: ", 0, found) + len(b"data: ")
    end = tail.find(b"\n", found)
    return json.loads(tail[start : end if end >= 0 else None])["usage"]["completion_tokens"]


def run_streams(
    base_url: str,
    bodies: Sequence[dict],
    concurrency: int,
    api_key: str | None = None,
) -> LoadResult:
    """Each of `concurrency` clients takes the next body until all are sent (a closed loop)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    queue = list(reversed(bodies))
    lock = threading.Lock()
    totals = {"tokens": 0, "failed": 0}

    def client_loop() -> None:
        with httpx.Client(base_url=base_url, headers=headers, timeout=600) as client:
            while True:
                with lock:
                    if not queue:
                        return
                    body = queue.pop()
                try:
                    tokens = _stream_one(client, body)
                except httpx.HTTPError:
                    with lock:
                        totals["failed"] += 1
                    continue
                with lock:
                    totals["tokens"] += tokens

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return LoadResult(len(bodies), totals["tokens"], time.perf_counter() - started, totals["failed"])
