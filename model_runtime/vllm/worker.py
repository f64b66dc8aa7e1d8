"""The vLLM process: vLLM's AsyncLLM over the model, driven by the HTTP process's commands
(scheduler/worker/messages.py), answering with one Step message per round of vLLM outputs.

Runs in vLLM's environment: `python -m model_runtime.vllm.worker COMMANDS_FD EVENTS_FD`, the VllmSpec
pickled on standard input (vllm/launch.py starts it so).

Admission is ours, so that the limits mean what they mean with the builtin engine: at most
scheduler.max_batch_size choices run in vLLM (its max_num_seqs is the same number, so it never queues
them itself), the others wait here in arrival order, for at most queue_timeout_s (then QueueTimeout, a
429), and a request runs for at most request_timeout_s (then RequestTimeout, a 504). vLLM batches,
samples, stops on stop strings and detokenizes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import signal
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs import TokensPrompt
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind
from vllm.sampling_params import SamplingParams as VllmSamplingParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError

from model_runtime.engine.base import EngineInfo
from model_runtime.logs import configure_logging
from model_runtime.scheduler.events import (
    EngineError,
    Event,
    QueueTimeout,
    RequestTimeout,
    SchedulerClosed,
    retry_after,
)
from model_runtime.scheduler.line import WaitingLine, classes_open
from model_runtime.scheduler.params import SamplingParams
from model_runtime.scheduler.worker.messages import (
    Cancel,
    Failed,
    Ready,
    Step,
    Stop,
    Stopped,
    Submit,
    ToEngine,
)
from model_runtime.vllm.params import engine_args, event_of, sampling_args
from model_runtime.vllm.spec import VllmSpec

log = logging.getLogger(__name__)

WARMUP_PROMPT = "Hello"


@dataclass(eq=False)
class _Choice:
    key: int  # the HTTP process's request
    index: int
    prompt: list[int]
    params: SamplingParams
    arrival: float = field(default_factory=time.monotonic)
    generated: int = 0
    ended: bool = False
    task: asyncio.Task[None] | None = None


class VllmLoop:
    """Our admission and time limits in front of AsyncLLM, and the events of every choice."""

    def __init__(self, engine: AsyncLLM, spec: VllmSpec, events: Connection, max_context: int) -> None:
        self.engine = engine
        self.settings = spec.scheduler
        self.events = events
        self.max_context = max_context
        self.waiting: WaitingLine[_Choice] = WaitingLine(spec.scheduler.priority_max_bypass)
        self.running: set[_Choice] = set()
        self.requests: dict[int, list[_Choice]] = {}
        self.pending: dict[int, list[Event]] = {}
        self.flush_due = False
        self.last_flush = time.monotonic()
        self.step_seconds = 0.05  # between rounds of outputs while busy: Retry-After's estimate
        self.stopping = asyncio.Event()
        self.dead = False  # vLLM's engine died: this process ends without the Stopped answer

    # --- commands ------------------------------------------------------------------------------------------
    def command(self, message: ToEngine) -> None:
        if isinstance(message, Submit):
            key, prompt, params, priority = message
            choices = [_Choice(key, i, prompt, p) for i, p in enumerate(params)]
            self.requests[key] = choices
            self.waiting.extend(choices, priority)
            self.admit()
        elif isinstance(message, Cancel):
            for choice in self.requests.pop(message.key, []):
                self.end(choice, Event(choice.index, "", choice.generated, "cancelled"))
        elif isinstance(message, Stop):
            self.stopping.set()

    def admit(self) -> None:
        """Into vLLM, up to the batch size, in the waiting line's order; the last interactive_slots
        places are for interactive requests (vLLM's own queue then holds only what it can run)."""
        settings = self.settings
        while (taken := len(self.running)) < settings.max_batch_size:
            classes = classes_open(taken, settings)
            if self.waiting.peek(classes) is None:
                break
            choice = self.waiting.pop(classes)
            self.running.add(choice)
            choice.task = asyncio.get_running_loop().create_task(self.generate(choice))

    # --- one choice ----------------------------------------------------------------------------------------
    async def generate(self, choice: _Choice) -> None:
        params = VllmSamplingParams(
            **sampling_args(choice.params, len(choice.prompt), self.max_context),
            output_kind=RequestOutputKind.DELTA,
        )
        prompt = TokensPrompt(prompt_token_ids=choice.prompt)
        try:
            async for output in self.engine.generate(prompt, params, f"{choice.key}.{choice.index}"):
                completion = output.outputs[0]
                choice.generated += len(completion.token_ids)
                self.emit(
                    choice, event_of(choice.index, completion, choice.generated, choice.params.logprobs)
                )
            if not choice.ended:
                raise EngineError("vLLM ended the request without a finish reason")
        except asyncio.CancelledError:
            pass  # ended by a cancel, a time limit or the stop, which said so; vLLM aborts it
        except Exception as exc:  # any failure of vLLM ends this choice with an error event
            log.exception("vLLM failed a request")
            failed = EngineError(f"the engine (vLLM) failed: {exc}")
            self.emit(choice, Event(choice.index, "", choice.generated, error=failed))
            if isinstance(exc, EngineDeadError):
                # vLLM's engine is gone and will not come back in this process: end it, so that the
                # HTTP process ends what is in flight and itself, for the service manager to restart.
                self.dead = True
                self.stopping.set()
        finally:
            self.running.discard(choice)
            self.admit()

    def end(self, choice: _Choice, event: Event) -> None:
        """End a choice from outside its generation (cancel, time limit, stop)."""
        if choice in self.running and choice.task is not None:
            choice.task.cancel()
        elif choice in self.waiting:
            self.waiting.remove(choice)
        self.emit(choice, event)

    def emit(self, choice: _Choice, event: Event) -> None:
        if choice.ended:
            return
        if event.final:
            choice.ended = True
            choices = self.requests.get(choice.key, [])
            if all(c.ended for c in choices):
                self.requests.pop(choice.key, None)
        self.pending.setdefault(choice.key, []).append(event)
        if not self.flush_due:
            # Every output of one vLLM round wakes its generator in this same turn of the loop: one
            # message for all of them, sent after they ran.
            self.flush_due = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_due = False
        if not self.pending:
            return
        now = time.monotonic()
        self.step_seconds = 0.9 * self.step_seconds + 0.1 * min(now - self.last_flush, 1.0)
        self.last_flush = now
        batch, self.pending = list(self.pending.items()), {}
        self.events.send(Step(self.waiting.depths(), len(self.running), batch))

    # --- time limits and the end ---------------------------------------------------------------------------
    async def watch(self) -> None:
        queue_limit, request_limit = self.settings.queue_timeout_s, self.settings.request_timeout_s
        interval = min(0.25, queue_limit / 4, request_limit / 4)
        while not self.stopping.is_set():
            await asyncio.sleep(interval)
            now = time.monotonic()
            for choice in [c for c in self.waiting if now - c.arrival > queue_limit]:
                error = QueueTimeout(queue_limit, retry_after(self.step_seconds))
                self.end(choice, Event(choice.index, "", 0, error=error))
            for choice in [c for c in self.running if now - c.arrival > request_limit]:
                self.end(
                    choice, Event(choice.index, "", choice.generated, error=RequestTimeout(request_limit))
                )

    def close(self) -> None:
        for choice in [*self.waiting, *self.running]:
            self.end(choice, Event(choice.index, "", choice.generated, error=SchedulerClosed()))
        self.flush()


def folder_parameters(folder: Path) -> int:
    """The model's parameter count, from its safetensors headers (no weights read)."""
    total = 0
    for path in folder.glob("*.safetensors"):
        with path.open("rb") as file:
            (size,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(size))
        for name, tensor in header.items():
            if name != "__metadata__":
                count = 1
                for dim in tensor["shape"]:
                    count *= dim
                total += count
    return total


async def _warm_up(engine: AsyncLLM) -> None:
    """One short generation before the first client, as the builtin engine does."""
    prompt = engine.get_tokenizer().encode(WARMUP_PROMPT) or [0]
    params = VllmSamplingParams(max_tokens=4, temperature=0.0)
    async for _ in engine.generate(TokensPrompt(prompt_token_ids=prompt), params, "warm-up"):
        pass


def _read_commands(commands: Connection, loop: asyncio.AbstractEventLoop, vllm_loop: VllmLoop) -> None:
    while True:
        try:
            message = commands.recv()
        except (EOFError, OSError):
            message = Stop()  # the HTTP process is gone: nobody is left to answer
        loop.call_soon_threadsafe(vllm_loop.command, message)
        if isinstance(message, Stop):
            return


async def serve(spec: VllmSpec, commands: Connection, events: Connection) -> None:
    started = time.monotonic()
    engine = None
    try:
        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args(spec)))
        max_context = engine.model_config.max_model_len
        vllm_loop = VllmLoop(engine, spec, events, max_context)
        async with asyncio.timeout(spec.model.load_timeout_s):
            await _warm_up(engine)
        tokenizer = engine.get_tokenizer()
        info = EngineInfo(
            max_context=max_context,
            eos_token_ids=frozenset(i for i in [tokenizer.eos_token_id] if i is not None),
            device=current_platform.device_type,
            dtype=str(engine.model_config.dtype).removeprefix("torch."),
            parameters=folder_parameters(Path(spec.model.path)),
            load_seconds=round(time.monotonic() - started, 2),
        )
    except Exception as exc:  # whatever stops vLLM's start, the HTTP process reports it
        log.exception("vLLM failed to start")
        events.send(Failed(f"{type(exc).__name__}: {exc}"))
        if engine is not None:
            engine.shutdown()
        return
    events.send(Ready(info))
    loop = asyncio.get_running_loop()
    threading.Thread(target=_read_commands, args=(commands, loop, vllm_loop), daemon=True).start()
    watch = loop.create_task(vllm_loop.watch())
    await vllm_loop.stopping.wait()
    watch.cancel()
    if vllm_loop.dead:
        vllm_loop.flush()
        sys.exit(1)
    vllm_loop.close()
    await asyncio.sleep(0)  # the cancelled generations run their ends (vLLM aborts them)
    engine.shutdown()
    events.send(Stopped())


def main() -> None:
    # The HTTP process decides when the engine stops (after draining), as with the builtin engine.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    commands_fd, events_fd = (int(arg) for arg in sys.argv[1:3])
    # Written by the HTTP process that started this one: the trust of multiprocessing's own pipes.
    spec: VllmSpec = pickle.load(sys.stdin.buffer)  # noqa: S301
    configure_logging(spec.logging.level, spec.logging.json_format)
    commands = Connection(commands_fd, writable=False)
    events = Connection(events_fd, readable=False)
    asyncio.run(serve(spec, commands, events))


if __name__ == "__main__":
    main()
