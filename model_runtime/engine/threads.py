"""How many CPU threads the engine's torch operations get, when the operator does not say.

torch's threads meet at a barrier after every operation, so when the HTTP process takes a core from
one of them, the others wait. A small model gains little from the last core and loses much to that
waiting (measured here on the 2M demo model: 1 thread 3,000 tok/s at 16 streams, 2 threads 2,200);
a large one gains nearly its share (100M model: 145 against 205). So: time a few decode steps with
all cores and with one core left to the HTTP process, and take all cores only when the time they save
per step is more than the HTTP work that would collide with them in that step.
"""

from __future__ import annotations

import logging
import os
import time

import torch

from model_runtime.engine.base import Engine

log = logging.getLogger(__name__)

# CPU seconds the HTTP process spends per streamed token (0.15 of a core at 2,000 tokens/s, measured
# with bench/serving.py on the demo model).
HTTP_SECONDS_PER_TOKEN = 75e-6
_PROBE_BATCH = 8
_PROBE_PROMPT = 32
_PROBE_STEPS = 6


def _step_seconds(engine: Engine, threads: int, batch: int) -> float:
    torch.set_num_threads(threads)
    ids = list(range(batch))
    engine.step([], [], ids, [[1 + (i % 7)] * _PROBE_PROMPT for i in ids])
    tokens = [2] * batch
    engine.step(ids, tokens, [], [])  # the first step at a new thread count pays for thread start-up
    started = time.perf_counter()
    for _ in range(_PROBE_STEPS):
        engine.step(ids, tokens, [], [])
    seconds = (time.perf_counter() - started) / _PROBE_STEPS
    engine.reset()
    return seconds


def choose_threads(engine: Engine, max_batch: int, cores: int | None = None) -> int:
    cores = cores or os.cpu_count() or 1
    if cores == 1:
        return 1
    batch = min(_PROBE_BATCH, max_batch)
    # Interleaved and repeated, keeping the best of each: the machine's noise hits both alike.
    fewer = more = float("inf")
    for _ in range(2):
        fewer = min(fewer, _step_seconds(engine, cores - 1, batch))
        more = min(more, _step_seconds(engine, cores, batch))
    chosen = cores if fewer - more > batch * HTTP_SECONDS_PER_TOKEN else cores - 1
    log.info(
        "engine threads chosen",
        extra={
            "threads": chosen,
            f"step_ms_{cores - 1}": round(fewer * 1e3, 2),
            f"step_ms_{cores}": round(more * 1e3, 2),
        },
    )
    torch.set_num_threads(chosen)
    return chosen
