"""Hot swap: a served name moves to another model version without dropping a request.

Beside (where two copies fit): the new version loads beside the old one (its own engine process), warms
up, and answers a smoke prompt; only then does the table entry switch, so new requests go to it while
requests in flight finish on the old one, which is stopped once it has none left. If the new version
fails to load or to answer, it is discarded and the old one goes on serving.

By drained restart (server.hot_swap: restart, or auto where two copies do not fit: vLLM holding most of
a GPU): readiness turns 503 (`swapping`), so the load balancer sends new requests elsewhere; the old
version finishes what it has and stops, then the new one loads and answers its smoke prompt. If it
fails, the old version loads again and serves.

Either way the error is reported to the caller. Triggered by POST /admin/models/{name}/swap and by
SIGHUP after a change of the configuration file.
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
from model_runtime.vllm.choice import two_copies_fit

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
            if old is not None and self._by_restart(old):
                new = await self._restart(model, old)
            else:
                new = await self._start(model, f"; {model.name}@{old.version} keeps serving" if old else "")
                self.runtime.models[model.name] = new  # from here new requests go to the new version
                if old is not None:
                    task = asyncio.create_task(self._retire(old))
                    self._retiring.add(task)
                    task.add_done_callback(self._retiring.discard)
            seconds = time.monotonic() - started
            log.info(
                "swapped", extra={"model": model.name, "version": new.version, "seconds": round(seconds, 3)}
            )
            return SwapResult(model.name, new.version, old.version if old else None, round(seconds, 3))

    def _by_restart(self, old: ServedModel) -> bool:
        mode = self.runtime.settings.server.hot_swap
        return mode == "restart" or (
            mode == "auto" and not two_copies_fit(old.engine, old.settings, self.runtime.settings.vllm)
        )

    async def _start(self, model: ModelSettings, outcome: str) -> ServedModel:
        """Load the new version and smoke-test it; on failure, an APIError that ends with outcome (what
        serves meanwhile)."""
        try:
            new = await asyncio.to_thread(self.loader, model)
        except Exception as exc:
            log.error(
                "swap failed: the new version did not load", extra={"model": model.name, "error": str(exc)}
            )
            raise APIError(
                422, f"the new version failed to load: {exc}{outcome}", "swap_failed", code="load_failed"
            ) from exc
        try:
            await smoke_test(new)
        except Exception as exc:
            await asyncio.to_thread(new.close)
            log.error(
                "swap failed: the new version did not answer", extra={"model": model.name, "error": str(exc)}
            )
            raise APIError(422, f"the new version failed its smoke prompt: {exc}{outcome}", "swap_failed",
                           code="smoke_failed") from exc  # fmt: skip
        return new

    async def _restart(self, model: ModelSettings, old: ServedModel) -> ServedModel:
        """Out of the pool, finish what the old version has, stop it, start the new one; if that fails,
        start the old one again."""
        log.warning(
            "swap by drained restart (two copies do not fit, or server.hot_swap is restart)",
            extra={"model": model.name, "version": old.version, "engine": old.engine},
        )
        self.runtime.set_phase("swapping")
        await self._finish(old)
        await asyncio.to_thread(old.close)
        serves_again = f"; {model.name}@{old.version} serves again"
        try:
            new = await self._start(model, serves_again)
        except APIError as failed:
            try:
                self.runtime.models[model.name] = await asyncio.to_thread(self.loader, old.settings)
            except Exception as exc:
                self.runtime.set_phase("failed")
                raise APIError(
                    500,
                    f"{failed.message.removesuffix(serves_again)}; and {model.name}@{old.version} did "
                    f"not start again: {exc}",
                    "swap_failed",
                    code="restore_failed",
                ) from exc
            self.runtime.set_phase("ready")
            raise
        self.runtime.models[model.name] = new
        self.runtime.set_phase("ready")
        return new

    async def _finish(self, old: ServedModel) -> None:
        """Let the old version finish what it has (at most the longest a request may take)."""
        deadline = time.monotonic() + self.runtime.settings.scheduler.request_timeout_s
        # The count lives with the engine's reader thread; polling it is simpler than a cross-thread event.
        while old.scheduler.outstanding and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    async def _retire(self, old: ServedModel) -> None:
        """Let the old version finish what it has, then stop its engine."""
        await self._finish(old)
        await asyncio.to_thread(old.close)
        log.info("retired", extra={"model": old.name, "version": old.version})
