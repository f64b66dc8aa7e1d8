"""Client load over HTTP, the one generator the benchmarks and the tests share: `clients` threads, each
sending the next request body from one shared source until the source runs out, the load is stopped,
its time is up or `max_requests` were sent. Every request's outcome is kept: status, tokens, which
version answered, and why it failed.

- closed loop (the serving benchmarks): a list of bodies, sent as fast as the server answers;
  `throughput()` sums it up.
- steady (the fleet or a server changed under load): `completions()` until stopped, with `pause_s`
  between a client's requests.
- saturating (the soak): `completions()` for `seconds`, with no pause and more clients than the server
  has places; a refused client waits a little before its next request, as a polite one would.
"""

from __future__ import annotations

import itertools
import json
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

# How much of a stream's end a client keeps: enough for its last event (the usage, an error or the last
# text) and the closing [DONE].
STREAM_TAIL_BYTES = 8192
# A client's wait after a refusal with Retry-After (which counts whole seconds; a load comes back sooner).
REFUSED_PAUSE_S = 0.2


@dataclass(frozen=True)
class Outcome:
    started: float  # time.monotonic()
    finished: float
    stream: bool
    status: int = 0  # the HTTP status; 0 when no answer came
    tokens: int = 0  # completion tokens, from the usage the server reported
    fingerprint: str = ""  # the system_fingerprint: which runtime and model version answered
    error: str = ""  # why the request failed; empty when it was answered in full
    retry_after: bool = False  # the refusal said when to come back
    first_event_s: float | None = None  # a stream: from sending to its first event (time to first token)
    event_gaps_s: tuple[float, ...] = ()  # a stream: between its events (inter-token latency)

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def refused(self) -> bool:
        return self.status in (429, 503)


@dataclass(frozen=True)
class Throughput:
    requests: int
    tokens: int
    seconds: float
    failed: int
    first_token_s: tuple[float, ...] = ()  # every stream's time to first token
    inter_token_s: tuple[float, ...] = ()  # every gap between two events of a stream

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100) by the nearest rank; NaN when there are no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def completions(model: str, max_tokens: int = 12, prompt: str = "This License") -> Iterator[dict]:
    """Completion requests for `model` without end, plain and streamed in turn (streams report usage)."""
    plain = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": False}
    streamed = {**plain, "stream": True, "stream_options": {"include_usage": True}}
    return itertools.cycle([plain, streamed])


@dataclass
class Load:
    base_url: str
    bodies: Iterable[dict]  # /v1/completions bodies, taken in turn by whichever client is free
    clients: int = 4
    api_key: str | None = None
    verify: ssl.SSLContext | bool = True  # the CA to trust for an https base_url
    pause_s: float = 0.0  # each client's wait between two requests (0: as fast as the server answers)
    seconds: float | None = None  # no request starts later than this after start() (None: no limit)
    max_requests: int = 100_000  # a bound, so that a load can never run forever
    timeout_s: float = 120.0
    expect_done: bool = True  # streams end with `data: [DONE]` (those of `transformers serve` do not)
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._source = iter(self.bodies)
        self._taken = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        self.started = self.ended = 0.0
        self._deadline = float("inf")

    def start(self) -> Load:
        self.started = time.monotonic()
        if self.seconds is not None:
            self._deadline = self.started + self.seconds
        for thread in self._threads:
            thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        """Wait for the clients to end (the source ran out, the time is up, or stop() was asked)."""
        for thread in self._threads:
            thread.join(timeout)
        self.ended = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self.join(120)

    def run(self) -> Load:
        """The whole load, start to end (a closed loop, or one with `seconds`)."""
        self.start().join()
        return self

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, requests: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.outcomes) < requests and time.monotonic() < deadline:
            time.sleep(0.05)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def throughput(self) -> Throughput:
        answered = [o for o in self.outcomes if o.ok]
        return Throughput(
            len(self.outcomes),
            sum(o.tokens for o in answered),
            self.ended - self.started,
            len(self.failures),
            tuple(o.first_event_s for o in answered if o.first_event_s is not None),
            tuple(gap for o in answered for gap in o.event_gaps_s),
        )

    def _next(self) -> dict | None:
        """The body a client sends next, or None when the load is over for it."""
        with self._lock:
            if self._stop.is_set() or self._taken >= self.max_requests or time.monotonic() >= self._deadline:
                return None
            body = next(self._source, None)
            self._taken += 1
            return body

    def _client(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        with httpx.Client(
            base_url=self.base_url, headers=headers, timeout=self.timeout_s, verify=self.verify
        ) as client:
            while (body := self._next()) is not None:
                outcome = _send(client, body, self.expect_done)
                with self._lock:
                    self.outcomes.append(outcome)
                pause = max(self.pause_s, REFUSED_PAUSE_S) if outcome.retry_after else self.pause_s
                self._stop.wait(pause)


def _send(client: httpx.Client, body: dict, expect_done: bool) -> Outcome:
    """One completion request, streamed or not, and how it went."""
    started, stream = time.monotonic(), bool(body.get("stream"))
    try:
        with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                return Outcome(
                    started,
                    time.monotonic(),
                    stream,
                    response.status_code,
                    error=f"HTTP {response.status_code}: {response.read()[:200]!r}",
                    retry_after="retry-after" in response.headers,
                )
            if stream:
                last, done, arrivals = _stream_end(response)
            else:
                last, done, arrivals = response.read(), True, []
    except httpx.HTTPError as exc:
        return Outcome(started, time.monotonic(), stream, error=f"{type(exc).__name__}: {exc}")
    finished = time.monotonic()
    try:
        answer: dict[str, Any] = json.loads(last)
    except ValueError:
        return Outcome(started, finished, stream, 200, error=f"an answer that is not JSON: {last[:200]!r}")
    if "error" in answer:
        return Outcome(started, finished, stream, 200, error=str(answer["error"]))
    if expect_done and not done:
        return Outcome(started, finished, stream, 200, error="stream ended without [DONE]")
    tokens = (answer.get("usage") or {}).get("completion_tokens", 0)
    # The latencies are those of the events with text: not [DONE], nor a last event of usage alone.
    trailing = int(done and stream) + int(stream and not answer.get("choices"))
    texts = arrivals[: len(arrivals) - trailing]
    return Outcome(
        started,
        finished,
        stream,
        200,
        tokens,
        answer.get("system_fingerprint", ""),
        first_event_s=texts[0] - started if texts else None,
        event_gaps_s=tuple(b - a for a, b in itertools.pairwise(texts)),
    )


def _stream_end(response: httpx.Response) -> tuple[bytes, bool, list[float]]:
    """A server-sent stream's last event, whether [DONE] followed it, and when each read brought events.
    Keeps only the stream's end, as raw bytes: a client should cost the machine little, since it shares
    the CPUs with the server it measures."""
    tail, arrivals = b"", []
    for chunk in response.iter_raw():
        arrivals.extend([time.monotonic()] * chunk.count(b"data: "))
        tail = (tail + chunk)[-STREAM_TAIL_BYTES:]
    events = [line[len(b"data: ") :] for line in tail.splitlines() if line.startswith(b"data: ")]
    done = bool(events) and events[-1] == b"[DONE]"
    if done:
        events.pop()
    return (events[-1] if events else b""), done, arrivals
