"""What one server process holds: its settings, keys, metrics, phase, and the table of served models.

The table maps a name to a served model (engine + scheduler + version + request hook). Serving one
model, serving several, swapping a version under a name and serving a plugin's model (an ensemble)
under a name are all entries of it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from transformers import PreTrainedTokenizerBase

from model_runtime import __version__
from model_runtime.access import OPEN, KeyPolicy
from model_runtime.config import ModelSettings, Settings
from model_runtime.engine.base import EngineInfo
from model_runtime.engine.loading import ModelFormat, detect_format, load_tokenizer
from model_runtime.registry.resolve import materialize
from model_runtime.scheduler.events import Dispatch, Event, Sink, deliver_here
from model_runtime.scheduler.worker.messages import WorkerSpec
from model_runtime.scheduler.worker.parent import EngineProcess, Launch, spawn_builtin
from model_runtime.server.errors import model_not_found, not_ready
from model_runtime.server.hook import Plugin, RequestHook
from model_runtime.server.metrics import RuntimeMetrics
from model_runtime.vllm.choice import choose_engine
from model_runtime.vllm.launch import VllmLaunch
from model_runtime.vllm.spec import VllmSpec

Phase = Literal["loading", "ready", "draining", "swapping", "failed"]
T = TypeVar("T")


@dataclass
class ServedModel:
    """One entry of the table: a name, the version behind it, its engine process, and the hook its
    requests go through (server/hook.py)."""

    name: str
    version: str
    info: EngineInfo
    tokenizer: PreTrainedTokenizerBase
    scheduler: EngineProcess
    hook: RequestHook
    settings: ModelSettings  # what it was loaded from (a failed drained-restart swap loads it again)
    engine: Literal["builtin", "vllm"]
    created: int = field(default_factory=lambda: int(time.time()))
    # What else ends with the engine (the vllm engine's metrics files and their reader).
    on_close: Callable[[], None] = lambda: None

    @property
    def fingerprint(self) -> str:
        """Which runtime and model version answered; sent as system_fingerprint."""
        return f"model-runtime-{__version__}:{self.name}@{self.version}"

    def close(self) -> None:
        self.scheduler.stop()
        self.on_close()


def loop_dispatch(loop: asyncio.AbstractEventLoop) -> Dispatch:
    """Move a whole engine step to the event loop in one wake-up; the sinks then run on the loop."""

    def dispatch(batch: list[tuple[Sink, list[Event]]]) -> None:
        loop.call_soon_threadsafe(deliver_here, batch)

    return dispatch


def start_served_model(
    settings: Settings, model: ModelSettings, metrics: RuntimeMetrics, dispatch: Dispatch, plugin: Plugin
) -> ServedModel:
    """Start an engine process for model (a registry reference is pulled first), and wait until it is
    loaded and warm (blocking). plugin: the formats served beyond the engine's own."""
    model = materialize(model, settings.registry)
    version = model.version or "unversioned"
    fmt = detect_format(Path(model.path))
    engine_kind = choose_engine(model, settings.vllm, fmt)
    launch, on_close = _engine_launch(settings, model, fmt, engine_kind, metrics, plugin)
    engine = EngineProcess(settings.scheduler, launch, metrics.for_model(model.name))
    try:
        info = engine.start(dispatch, model.load_timeout_s)
    except Exception:
        on_close()
        raise
    # The HTTP process needs the tokenizer too (prompts, chat template, token texts), not the weights.
    tokenizer = load_tokenizer(fmt, model.trust_remote_code)
    metrics.load_seconds.labels(model=model.name, version=version).set(info.load_seconds)
    hook = plugin.hook(fmt, model.name)
    return ServedModel(
        model.name, version, info, tokenizer, engine, hook, model, engine_kind, on_close=on_close
    )


def _engine_launch(
    settings: Settings,
    model: ModelSettings,
    fmt: ModelFormat,
    engine: Literal["builtin", "vllm"],
    metrics: RuntimeMetrics,
    plugin: Plugin,
) -> tuple[Launch, Callable[[], None]]:
    """How the engine process of model starts (vLLM's, or this package's with the plugin's formats), and
    what ends with it."""
    if engine == "builtin":
        spec = WorkerSpec(
            model, settings.scheduler, settings.logging, plugin.engine_loaders(), settings.registry
        )
        return spawn_builtin(spec), lambda: None
    vllm = VllmLaunch(VllmSpec(model, settings.scheduler, settings.vllm, settings.logging))
    stop_reading = metrics.read_engine_metrics(vllm.metrics_dir)

    def on_close() -> None:
        stop_reading()
        vllm.close()

    return vllm, on_close


class RuntimeState:
    def __init__(
        self,
        settings: Settings,
        api_keys: Mapping[str, KeyPolicy],
        admin_keys: frozenset[str] = frozenset(),
    ) -> None:
        self.settings = settings
        self.api_keys = api_keys
        self.admin_keys = dict.fromkeys(admin_keys, OPEN)
        self.dispatch: Dispatch | None = None  # set on the event loop at start
        self.metrics = RuntimeMetrics()
        self.models: dict[str, ServedModel] = {}
        self.phase: Phase = "loading"
        self.in_flight = 0  # generation requests between arrival and their last byte
        self._idle = asyncio.Event()
        self._idle.set()
        # Tokenizing (and rendering chat templates) runs here, off the event loop, so that a large
        # prompt never holds up health probes or streams; a few threads, and requests beyond them wait
        # their turn, so a flood of requests cannot pile up threads.
        self._tokenizing = ThreadPoolExecutor(
            settings.server.tokenizer_threads, thread_name_prefix="tokenize"
        )
        self.metrics.ready.set_function(lambda: 1.0 if self.readiness() == "ready" else 0.0)

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

    def set_phase(self, phase: Phase) -> None:
        self.phase = phase

    def readiness(self) -> str:
        """The phase, or "stalled" while a served model's engine has completed no step for
        scheduler.engine_stall_s with work waiting (the engine process watches itself for the exit)."""
        if self.phase == "ready":
            limit = self.settings.scheduler.engine_stall_s
            if any(m.scheduler.stalled_for() > limit for m in self.models.values()):
                return "stalled"
        return self.phase

    def check_accepting(self) -> None:
        state = self.readiness()
        if state != "ready":
            raise not_ready(state)

    async def tokenize(self, served: ServedModel, work: Callable[..., T], *args: object) -> T:
        """Run work (tokenizing a request's prompts for served) on the tokenizing threads. Meanwhile
        served counts the request as outstanding: a hot swap then waits for it, and nothing else yields
        between here and the request's submission."""
        with served.scheduler.preparing():
            return await asyncio.get_running_loop().run_in_executor(self._tokenizing, work, *args)

    def model(self, name: str, policy: KeyPolicy = OPEN) -> ServedModel:
        """The served model of that name, if the key (its policy) may use it: a model it may not use
        is answered as one that does not exist, so a key learns nothing of what it cannot use."""
        served = self.models.get(name) if policy.may_use(name) else None
        if served is None:
            raise model_not_found(name)
        return served

    def close(self) -> None:
        for served in self.models.values():
            served.close()
        self.models.clear()
        self._tokenizing.shutdown(wait=False, cancel_futures=True)
