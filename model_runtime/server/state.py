"""What one server process holds: its settings, keys, metrics, phase, and the table of served models.

The table maps a name to a served model (engine + scheduler + version). Serving one model, serving
several, swapping a version under a name and serving an ensemble under a name are all entries of it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from model_runtime import __version__
from model_runtime.config import ModelSettings, SchedulerSettings, Settings
from model_runtime.engine.base import Engine
from model_runtime.engine.torch_engine import load_torch_engine
from model_runtime.scheduler.core import Event, Scheduler
from model_runtime.scheduler.sampling import SamplingParams
from model_runtime.server.errors import APIError, not_ready
from model_runtime.server.metrics import RuntimeMetrics

Phase = Literal["loading", "ready", "draining", "failed"]
WARMUP_PROMPT = "Hello"


@dataclass
class ServedModel:
    name: str
    version: str
    engine: Engine
    scheduler: Scheduler
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def fingerprint(self) -> str:
        """Which runtime and model version answered; sent as system_fingerprint."""
        return f"model-runtime-{__version__}:{self.name}@{self.version}"

    def close(self) -> None:
        self.scheduler.stop()
        self.engine.close()


class _WaitSink:
    def __init__(self, choices: int) -> None:
        self.remaining = choices
        self.events: list[Event] = []
        self.done = threading.Event()

    def deliver(self, events: list[Event]) -> None:
        self.events.extend(events)
        self.remaining -= sum(1 for e in events if e.finish_reason or e.error)
        if self.remaining <= 0:
            self.done.set()


def warm_up(served: ServedModel, timeout: float = 120.0) -> None:
    """Run one short generation through the scheduler so the first client does not pay for lazy
    initialisation (kernel selection, cache allocation); raises if the model cannot generate."""
    sink = _WaitSink(1)
    prompt = served.engine.tokenizer(WARMUP_PROMPT)["input_ids"] or [0]
    served.scheduler.submit(prompt, [SamplingParams(max_tokens=4, temperature=0.0)], sink)
    if not sink.done.wait(timeout):
        raise RuntimeError(f"warm-up of {served.name} did not finish within {timeout:.0f}s")
    errors = [e.error for e in sink.events if e.error]
    if errors:
        raise RuntimeError(f"warm-up of {served.name} failed: {errors[0]}")


def load_served_model(
    model: ModelSettings, scheduler_settings: SchedulerSettings, metrics: RuntimeMetrics
) -> ServedModel:
    engine = load_torch_engine(model, max_batch=scheduler_settings.max_batch_size)
    version = model.version or "unversioned"
    metrics.load_seconds.labels(model=model.name, version=version).set(engine.info.load_seconds)
    scheduler = Scheduler(engine, scheduler_settings, metrics.for_model(model.name))
    scheduler.start()
    served = ServedModel(model.name, version, engine, scheduler)
    try:
        warm_up(served)
    except Exception:
        served.close()
        raise
    return served


class RuntimeState:
    def __init__(self, settings: Settings, api_keys: frozenset[str]) -> None:
        self.settings = settings
        self.api_keys = api_keys
        self.metrics = RuntimeMetrics()
        self.models: dict[str, ServedModel] = {}
        self.phase: Phase = "loading"
        self.detail: str | None = None
        self.in_flight = 0  # generation requests between arrival and their last byte
        self._idle = asyncio.Event()
        self._idle.set()

    def request_started(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def request_finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self, seconds: float) -> bool:
        """Wait until no generation request is in flight; False if `seconds` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def set_phase(self, phase: Phase, detail: str | None = None) -> None:
        self.phase, self.detail = phase, detail
        self.metrics.ready.set(1 if phase == "ready" else 0)

    def check_accepting(self) -> None:
        if self.phase != "ready":
            raise not_ready(self.phase)

    def model(self, name: str) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise APIError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")
        return served

    def close(self) -> None:
        for served in self.models.values():
            served.close()
        self.models.clear()
