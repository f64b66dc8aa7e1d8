"""Constant, bounded client load for tests that change a server under it: every request is counted,
streamed or not, and the system_fingerprint of each answer is kept (which version answered)."""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class Outcome:
    started: float
    ok: bool
    fingerprint: str = ""
    error: str = ""
    stream: bool = False


@dataclass
class BackgroundLoad:
    base_url: str
    api_key: str
    model: str
    clients: int = 4
    max_requests: int = 2000  # a bound, so that a test can never loop forever
    max_tokens: int = 12
    pause_s: float = 0.0  # each client's wait between two requests (0: as fast as the server answers)
    verify: ssl.SSLContext | bool = True  # the CA to trust for an https base_url
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.clients)
        ]

    def __enter__(self) -> BackgroundLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)

    def wait_for(self, requests: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.outcomes) < requests and time.monotonic() < deadline:
            time.sleep(0.05)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def _client(self, index: int) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=120, verify=self.verify) as client:
            turn = 0
            while not self._stop.is_set():
                with self._lock:
                    if len(self.outcomes) >= self.max_requests:
                        return
                stream = (index + turn) % 2 == 0
                turn += 1
                outcome = self._one(client, stream)
                with self._lock:
                    self.outcomes.append(outcome)
                self._stop.wait(self.pause_s)

    def _one(self, client: httpx.Client, stream: bool) -> Outcome:
        started = time.monotonic()
        body = {
            "model": self.model,
            "prompt": "This License",
            "max_tokens": self.max_tokens,
            "stream": stream,
        }
        try:
            if not stream:
                response = client.post("/v1/completions", json=body)
                if response.status_code != 200:
                    return Outcome(started, False, error=f"{response.status_code} {response.text[:200]}")
                return Outcome(started, True, response.json()["system_fingerprint"])
            with client.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code != 200:
                    return Outcome(
                        started, False, error=f"{response.status_code} {response.read()[:200]!r}", stream=True
                    )
                fingerprint, done = "", False
                for line in response.iter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            return Outcome(started, False, error=str(chunk["error"]), stream=True)
                        fingerprint = chunk.get("system_fingerprint", fingerprint)
                if not done:
                    return Outcome(started, False, error="stream ended without [DONE]", stream=True)
                return Outcome(started, True, fingerprint, stream=True)
        except httpx.HTTPError as exc:
            return Outcome(started, False, error=f"{type(exc).__name__}: {exc}", stream=stream)
