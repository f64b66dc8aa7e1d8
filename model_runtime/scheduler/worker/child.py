"""The engine process: loads and warms the engine, runs the scheduler over it, and answers the HTTP
process's commands (messages.ToEngine) with one Step message per engine step."""

from __future__ import annotations

import logging
import signal
import threading
from multiprocessing.connection import Connection

import torch
from transformers import PreTrainedTokenizerBase

from model_runtime.config import SchedulerSettings
from model_runtime.engine.base import Engine
from model_runtime.engine.factory import load_engine
from model_runtime.engine.threads import choose_threads
from model_runtime.logs import configure_logging
from model_runtime.scheduler.core import Scheduler
from model_runtime.scheduler.events import EngineError, Event, Handle, SchedulerError, Sink
from model_runtime.scheduler.params import SamplingParams
from model_runtime.scheduler.worker.messages import (
    Cancel,
    Failed,
    FromEngine,
    Ready,
    Step,
    Stop,
    Stopped,
    Submit,
    WorkerSpec,
)

log = logging.getLogger(__name__)

WARMUP_PROMPT = "Hello"


class _KeySink:
    """Stands for a request of the HTTP process inside the engine process; dispatch sends its events by
    key."""

    def __init__(self, key: int, choices: int) -> None:
        self.key = key
        self.open = choices

    def deliver(self, events: list[Event]) -> None:
        raise AssertionError("the worker's dispatch sends keyed events; it never delivers them here")


class _WaitSink:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.done = threading.Event()

    def deliver(self, events: list[Event]) -> None:
        self.events.extend(events)
        if any(e.final for e in events):
            self.done.set()


def _warm_up(scheduler: Scheduler, tokenizer: PreTrainedTokenizerBase, timeout: float = 300.0) -> None:
    """One short generation before the first client, so that nobody pays for lazy initialisation, and
    a model that cannot generate fails here rather than on traffic."""
    sink = _WaitSink()
    prompt = tokenizer(WARMUP_PROMPT)["input_ids"] or [0]
    scheduler.submit(prompt, [SamplingParams(max_tokens=4, temperature=0.0)], sink)
    if not sink.done.wait(timeout):
        raise EngineError(f"warm-up generation did not finish within {timeout:.0f}s")
    errors = [e.error for e in sink.events if e.error]
    if errors:
        raise EngineError(f"warm-up generation failed: {errors[0]}")


class _Outbox:
    """The events pipe, which the scheduler thread (steps) and the command loop (refusals, the end)
    both send on."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._lock = threading.Lock()

    def send(self, message: FromEngine) -> None:
        with self._lock:
            self._connection.send(message)


class _EngineLoop:
    """The scheduler over a loaded engine, fed by the command pipe."""

    def __init__(self, engine: Engine, settings: SchedulerSettings, outbox: _Outbox) -> None:
        self.engine = engine
        self.outbox = outbox
        self.handles: dict[int, Handle] = {}
        self.scheduler = Scheduler(engine, settings, self.dispatch)

    def dispatch(self, batch: list[tuple[Sink, list[Event]]]) -> None:
        keyed = []
        for sink, sink_events in batch:
            if isinstance(sink, _KeySink):
                keyed.append((sink.key, sink_events))
                sink.open -= sum(1 for e in sink_events if e.final)
                if sink.open <= 0:
                    self.handles.pop(sink.key, None)
            else:
                sink.deliver(sink_events)  # the warm-up's own sink
        if keyed:
            self.outbox.send(Step(*self.scheduler.load, keyed))

    def serve(self, commands: Connection) -> None:
        while True:
            try:
                message = commands.recv()
            except (EOFError, OSError):
                break  # the HTTP process is gone: nobody is left to answer
            if isinstance(message, Submit):
                self.submit(message)
            elif isinstance(message, Cancel):
                handle = self.handles.pop(message.key, None)
                if handle is not None:
                    self.scheduler.cancel(handle)
            elif isinstance(message, Stop):
                break
        self.scheduler.stop()
        self.engine.close()
        self.outbox.send(Stopped())

    def submit(self, message: Submit) -> None:
        key, prompt, params, priority = message
        try:
            self.handles[key] = self.scheduler.submit(prompt, params, _KeySink(key, len(params)), priority)
        except SchedulerError as exc:
            refused = [Event(i, "", 0, error=exc) for i in range(len(params))]
            self.outbox.send(Step(*self.scheduler.load, [(key, refused)]))


def _start(spec: WorkerSpec, outbox: _Outbox) -> _EngineLoop | None:
    """Load, start and warm the engine; answer Ready, or Failed with the reason (and return None)."""
    settings = spec.scheduler
    loop = None
    try:
        engine = load_engine(
            spec.model, settings.max_batch_size, settings.max_prefill_tokens, spec.registry, spec.loaders
        )
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        else:
            choose_threads(engine, settings.max_batch_size)
        loop = _EngineLoop(engine, settings, outbox)
        loop.scheduler.start()
        _warm_up(loop.scheduler, engine.tokenizer)
    except Exception as exc:
        log.exception("engine failed to start")
        outbox.send(Failed(f"{type(exc).__name__}: {exc}"))
        if loop is not None:
            loop.scheduler.stop()
        return None
    outbox.send(Ready(engine.info))
    return loop


def worker_main(spec: WorkerSpec, commands: Connection, events: Connection) -> None:
    """Entry point of the engine process."""
    # The HTTP process decides when the engine stops (after draining); a signal sent to the whole
    # process group (Ctrl-C, systemd's stop) must not kill the engine under requests still in flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(spec.logging.level, spec.logging.json_format)
    loop = _start(spec, _Outbox(events))
    if loop is not None:
        loop.serve(commands)
