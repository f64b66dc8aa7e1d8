"""The HTTP process's side of the engine process: EngineProcess, which stands for the Scheduler of an
engine running in a child process (same submit, cancel, load and stop), watches it for stalls, and ends
what was in flight when it dies."""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Protocol

from model_runtime.access import DEFAULT_PRIORITY, PRIORITIES, Priority
from model_runtime.config import SchedulerSettings
from model_runtime.engine.base import EngineInfo, ModelLoadError
from model_runtime.scheduler.events import (
    Dispatch,
    EngineError,
    EngineStalled,
    Event,
    Handle,
    QueueFull,
    SchedulerClosed,
    Sink,
    retry_after,
)
from model_runtime.scheduler.params import SamplingParams
from model_runtime.scheduler.worker.child import worker_main
from model_runtime.scheduler.worker.engine_starts import engine_context
from model_runtime.scheduler.worker.messages import (
    Cancel,
    Failed,
    Step,
    Stop,
    Stopped,
    Submit,
    ToEngine,
    WorkerSpec,
)

log = logging.getLogger(__name__)


class StepObserver:
    """Metrics that the HTTP process takes from each step (see server.metrics.ModelMetrics)."""

    def observe_step(self, waiting: tuple[int, ...], running: int) -> None: ...
    def observe_first_token(self, seconds: float) -> None: ...
    def observe_inter_token(self, seconds: float) -> None: ...
    def count_tokens(self, prompt: int, generated: int) -> None: ...


class _Request:
    """A request in flight, as the HTTP process tracks it: for metrics and for failing it cleanly."""

    __slots__ = ("arrival", "choices", "finished", "last", "sink", "tokens")

    def __init__(self, sink: Sink, choices: int) -> None:
        self.sink = sink
        self.choices = choices
        self.finished: set[int] = set()
        self.arrival = time.monotonic()
        self.last: dict[int, float] = {}
        self.tokens: dict[int, int] = {}


class ChildProcess(Protocol):
    """The engine process as EngineProcess watches it (a multiprocessing.Process, or a subprocess in
    another environment behind an adapter)."""

    @property
    def exitcode(self) -> int | None: ...
    def is_alive(self) -> bool: ...
    def join(self, timeout: float | None = None) -> None: ...
    def kill(self) -> None: ...


# Starts the engine process on the child's ends of the two pipes (commands to read, events to write).
Launch = Callable[[Connection, Connection], ChildProcess]


def spawn_builtin(spec: WorkerSpec) -> Launch:
    """This package's engines (torch, ONNX, a plugin's) in a child process (engine_starts.py)."""

    def launch(commands: Connection, events: Connection) -> ChildProcess:
        # Forked from a process with no threads or locks, which imported the engines already.
        process = engine_context().Process(
            target=worker_main, args=(spec, commands, events), name=f"engine-{spec.model.name}"
        )
        process.start()
        return process

    return launch


class EngineProcess:
    """Stands for the Scheduler of an engine running in a child process: same submit/cancel/stop."""

    def __init__(
        self, settings: SchedulerSettings, launch: Launch, observer: StepObserver | None = None
    ) -> None:
        self.settings = settings
        self.observer = observer or StepObserver()
        self._launch = launch
        self._commands_out, commands_in = multiprocessing.Pipe(duplex=False)[::-1]
        events_in, self._events_out = multiprocessing.Pipe(duplex=False)
        self._events_in = events_in
        self._process: ChildProcess | None = None
        self._commands_in = commands_in
        self._keys = itertools.count()
        self._requests: dict[int, _Request] = {}
        self._lock = threading.Lock()
        self._outstanding = 0  # sequences submitted and not finished: the queue bound's measure
        self._preparing = 0  # requests being prepared for this engine (tokenizing), not yet submitted
        self._load: tuple[tuple[int, ...], int] = ((0,) * len(PRIORITIES), 0)
        self._step_seconds = 0.05
        # The last step, or the moment work arrived at an idle engine: what a stall is measured from.
        self._last_step = time.monotonic()
        self._stall: EngineStalled | None = None  # set when the watch ended a stalled engine
        self._dispatch: Dispatch | None = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._stopping = threading.Event()  # stop() was asked: the process ending is no surprise
        self._stopped = threading.Event()
        self.info: EngineInfo | None = None
        # Called (with the reason) if the engine process dies unasked.
        self.on_death: Callable[[str], None] | None = None

    @property
    def _child(self) -> ChildProcess:
        assert self._process is not None, "the engine process has not been started"
        return self._process

    def start(self, dispatch: Dispatch, timeout: float) -> EngineInfo:
        """Spawn, load and warm the engine; raise ModelLoadError (with the worker's reason) on failure."""
        self._dispatch = dispatch
        self._process = self._launch(self._commands_in, self._events_out)
        # The child holds these ends now; closing ours makes EOF on the events pipe mean "it died".
        self._events_out.close()
        self._commands_in.close()
        if not self._events_in.poll(timeout):
            self._kill()
            raise ModelLoadError(f"the engine did not start within {timeout:.0f}s")
        try:
            message = self._events_in.recv()
        except EOFError:
            self._child.join(5)
            raise ModelLoadError(f"the engine process exited with code {self._child.exitcode}") from None
        if isinstance(message, Failed):
            self._child.join(10)
            raise ModelLoadError(message.reason)
        self.info = message.info
        self._reader = threading.Thread(target=self._read, name="engine-events", daemon=True)
        self._reader.start()
        threading.Thread(target=self._watch, name="engine-watch", daemon=True).start()
        return self.info

    # --- the Scheduler surface ---------------------------------------------------------------------------
    def submit(
        self,
        prompt: Sequence[int],
        params: Sequence[SamplingParams],
        sink: Sink,
        priority: Priority = DEFAULT_PRIORITY,
    ) -> Handle:
        settings = self.settings
        with self._lock:
            if self._stopped.is_set():
                raise SchedulerClosed()
            # Same bound as the in-process scheduler: waiting beyond the free slots <= max_queue.
            if self._outstanding + len(params) > settings.max_batch_size + settings.max_queue:
                raise QueueFull(self.retry_after())
            key = next(self._keys)
            self._requests[key] = _Request(sink, len(params))
            if self._outstanding == 0:
                # An idle engine has no step to show: progress is due from now. (This also keeps the
                # idle time out of the step time that Retry-After is estimated from.)
                self._last_step = time.monotonic()
            self._outstanding += len(params)
        self.observer.count_tokens(len(prompt), 0)
        self._send(Submit(key, list(prompt), list(params), priority))
        return Handle((key,))

    def cancel(self, handle: Handle) -> None:
        self._send(Cancel(handle.seq_ids[0]))

    def _send(self, message: ToEngine) -> None:
        with self._send_lock:
            if self._stopped.is_set():
                return
            # An OSError means the engine is gone; the reader thread then fails what is outstanding.
            with contextlib.suppress(OSError):
                self._commands_out.send(message)

    def retry_after(self) -> float:
        return retry_after(self._step_seconds)

    @property
    def load(self) -> tuple[tuple[int, ...], int]:
        return self._load

    @property
    def outstanding(self) -> int:
        """What a retiring model waits for: sequences submitted and not finished, and requests being
        prepared for it."""
        return self._outstanding + self._preparing

    @contextlib.contextmanager
    def preparing(self) -> Iterator[None]:
        """Count a request as outstanding while it is prepared (tokenized, off the event loop) for
        this engine, so that a hot swap does not retire the engine under it."""
        self._preparing += 1
        try:
            yield
        finally:
            self._preparing -= 1

    def stalled_for(self) -> float:
        """Seconds the engine has completed no step while work waits for it; 0 when it has none."""
        if self._outstanding == 0:
            return 0.0
        return time.monotonic() - self._last_step

    def stop(self, timeout: float = 30.0) -> None:
        """End the engine: whatever still runs ends with SchedulerClosed, then the process exits."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._send(Stop())
        self._child.join(timeout)
        if self._child.is_alive():
            log.warning("engine did not stop within %.0fs; killing it", timeout)
            self._kill()
        if self._reader is not None:
            self._reader.join(5)
        self._stopped.set()

    # --- the reader thread --------------------------------------------------------------------------------
    def _read(self) -> None:
        while True:
            try:
                message = self._events_in.recv()
            except (EOFError, OSError):
                break
            if isinstance(message, Stopped):
                break
            self._on_step(message)
        died = not self._stopping.is_set()
        error: Exception = SchedulerClosed()
        if died:
            error = self._stall or EngineError("the engine process ended unexpectedly")
        self._fail_outstanding(error)
        if died:
            self._stopped.set()
            self._child.join(5)
            reason = str(self._stall) if self._stall else f"exit code {self._child.exitcode}"
            log.error("engine process ended unexpectedly", extra={"reason": reason})
            if self.on_death is not None:
                self.on_death(f"engine process ended ({reason})")

    def _watch(self) -> None:
        """Watches for a wedged engine (a hung device, a stopped process), which the engine loop's own
        deadlines cannot see: past engine_stall_s without a step while work waits, readiness turns 503
        (RuntimeState.readiness asks stalled_for); past engine_stall_exit_s the engine is killed, so that
        the reader ends what was in flight with EngineStalled and on_death ends this process."""
        settings = self.settings
        interval = min(1.0, settings.engine_stall_s / 4)
        warned = False
        while not self._stopped.wait(interval):
            stalled = self.stalled_for()
            if stalled <= settings.engine_stall_s or self._stopping.is_set():
                warned = False
                continue
            if not warned:
                log.warning(
                    "the engine has completed no step while work waits; readiness is 503",
                    extra={"seconds": round(stalled, 1), "outstanding": self._outstanding},
                )
                warned = True
            if stalled > settings.engine_stall_exit_s:
                log.error(
                    "the engine is stalled; ending it and this process", extra={"seconds": round(stalled, 1)}
                )
                self._stall = EngineStalled(stalled)
                self._child.kill()  # works on a stopped process too; the reader then sees the pipe close
                return

    def _on_step(self, step: Step) -> None:
        waiting, running, keyed = step
        now = time.monotonic()
        self._step_seconds = 0.9 * self._step_seconds + 0.1 * (now - self._last_step)
        self._last_step = now
        self._load = (waiting, running)
        self.observer.observe_step(waiting, running)
        batch: list[tuple[Sink, list[Event]]] = []
        generated = 0
        with self._lock:
            for key, events in keyed:
                request = self._requests.get(key)
                if request is None:
                    continue
                for event in events:
                    previous = request.last.get(event.index)
                    new = event.tokens - request.tokens.get(event.index, 0)
                    # One inter-token observation per token, as the histogram promises: an engine
                    # that hands over several tokens at once (vLLM may) spreads the gap over them,
                    # and the ones that came with the first token came with no gap.
                    if previous is None:
                        self.observer.observe_first_token(now - request.arrival)
                        gaps = [0.0] * (new - 1)
                    else:
                        gaps = [(now - previous) / new] * new if new > 0 else []
                    for gap in gaps:
                        self.observer.observe_inter_token(gap)
                    generated += new
                    request.last[event.index] = now
                    request.tokens[event.index] = event.tokens
                    if event.final:
                        request.finished.add(event.index)
                        self._outstanding -= 1
                if len(request.finished) >= request.choices:
                    del self._requests[key]
                batch.append((request.sink, events))
        self.observer.count_tokens(0, generated)
        if batch and self._dispatch is not None:
            self._dispatch(batch)

    def _fail_outstanding(self, error: Exception) -> None:
        with self._lock:
            requests, self._requests = self._requests, {}
            self._outstanding = 0
        batch = []
        for request in requests.values():
            unfinished = [i for i in range(request.choices) if i not in request.finished]
            ended = [Event(i, "", request.tokens.get(i, 0), error=error) for i in unfinished]
            batch.append((request.sink, ended))
        if batch and self._dispatch is not None:
            self._dispatch(batch)

    def _kill(self) -> None:
        self._child.kill()
        self._child.join(5)
