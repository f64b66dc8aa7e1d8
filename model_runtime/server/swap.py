"""Hot swap: a served name moves to another model version without dropping a request.

The new version loads beside the old one (its own engine process), warms up, and answers a smoke
prompt; only then does the table entry switch, so new requests go to it while requests in flight
finish on the old one, which is stopped once it has none left. If the new version fails to load or
to answer, it is discarded and the old one goes on serving; the error is reported to the caller.
Triggered by POST /admin/models/{name}/swap and by SIGHUP after a change of the configuration file.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from model_runtime.config import ModelSettings
from model_runtime.scheduler.events import Event
from model_runtime.scheduler.params import SamplingParams
from model_runtime.server.errors import APIError
from model_runtime.server.state import RuntimeState, ServedModel

log = logging.getLogger(__name__)

SMOKE_PROMPT = "Hello"
SMOKE_TIMEOUT_S = 60.0

Loader = Callable[[ModelSettings], ServedModel]


@dataclass(frozen=True)
class SwapResult:
    name: str
    version: str
    previous: str | None
    seconds: float


class _FirstFinal:
    """A sink (called on the event loop) that resolves once the one sequence ends."""

    def __init__(self) -> None:
        self.future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()

    def deliver(self, events: list[Event]) -> None:
        for event in events:
            if event.final and not self.future.done():
                self.future.set_result(event)


async def smoke_test(served: ServedModel) -> None:
    """One short generation through the HTTP process's own path to the new engine."""
    sink = _FirstFinal()
    prompt = served.tokenizer(SMOKE_PROMPT)["input_ids"] or [0]
    served.scheduler.submit(prompt, [SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)], sink)
    event = await asyncio.wait_for(sink.future, SMOKE_TIMEOUT_S)
    if event.error is not None or event.tokens < 1:
        raise RuntimeError(f"the smoke prompt failed: {event.error or 'no token generated'}")


class Swapper:
    def __init__(self, runtime: RuntimeState, loader: Loader) -> None:
        self.runtime = runtime
        self.loader = loader
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()

    async def swap(self, model: ModelSettings) -> SwapResult:
        if self._lock.locked():
            raise APIError(409, "a swap is already running; wait for it", code="swap_in_progress")
        async with self._lock:
            started = time.monotonic()
            old = self.runtime.models.get(model.name)
            keeps = f"; {model.name}@{old.version} keeps serving" if old else ""
            try:
                new = await asyncio.to_thread(self.loader, model)
            except Exception as exc:
                log.error(
                    "swap failed: the new version did not load",
                    extra={"model": model.name, "error": str(exc)},
                )
                raise APIError(
                    422, f"the new version failed to load: {exc}{keeps}", "swap_failed", code="load_failed"
                ) from exc
            try:
                await smoke_test(new)
            except Exception as exc:
                await asyncio.to_thread(new.close)
                log.error(
                    "swap failed: the new version did not answer",
                    extra={"model": model.name, "error": str(exc)},
                )
                raise APIError(422, f"the new version failed its smoke prompt: {exc}{keeps}", "swap_failed",
                               code="smoke_failed") from exc  # fmt: skip
            self.runtime.models[model.name] = new  # from here new requests go to the new version
            seconds = time.monotonic() - started
            log.info(
                "swapped", extra={"model": model.name, "version": new.version, "seconds": round(seconds, 3)}
            )
            if old is not None:
                task = asyncio.create_task(self._retire(old))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            return SwapResult(model.name, new.version, old.version if old else None, round(seconds, 3))

    async def _retire(self, old: ServedModel) -> None:
        """Let the old version finish what it has, then stop its engine."""
        deadline = time.monotonic() + self.runtime.settings.scheduler.request_timeout_s
        # The count lives with the engine's reader thread; polling it is simpler than a cross-thread event.
        while old.scheduler.outstanding and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await asyncio.to_thread(old.close)
        log.info("retired", extra={"model": old.name, "version": old.version})
