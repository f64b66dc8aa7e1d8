"""Running the server process: uvicorn with a graceful drain on SIGTERM.

On SIGTERM (or Ctrl-C) readiness turns 503 at once and new generation requests are refused with 503,
while requests in flight, streams included, run to their end for up to server.shutdown_grace_s. Then
the process exits 0. A second Ctrl-C forces the exit. A model that fails to load exits 1, so the
service manager sees the failure.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from types import FrameType

import uvicorn

from model_runtime.config import ModelSettings, Settings
from model_runtime.server.app import create_app
from model_runtime.server.state import RuntimeState, ServedModel, start_served_model

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, runtime: RuntimeState, grace: float, reload: Callable[[], Settings]
    ) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.grace = grace
        self.reload = reload
        self._reloads: set[asyncio.Task] = set()
        self.exit_code = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def serve(self, sockets: list | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        await super().serve(sockets)

    def _on_hangup(self) -> None:
        task = asyncio.ensure_future(self._reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload(self) -> None:
        """SIGHUP: read the configuration again; a changed model section hot-swaps the model."""
        try:
            fresh = self.reload()
        except Exception as exc:
            log.error("SIGHUP: the configuration does not load; nothing changed", extra={"error": str(exc)})
            return
        current = self.runtime.settings
        if fresh.model == current.model:
            log.info("SIGHUP: the model settings are unchanged")
            return
        if fresh.model_copy(update={"model": current.model}) != current:
            log.warning(
                "SIGHUP: only the model section changes without a restart; other changes wait for one"
            )
        try:
            await self.config.app.state.swapper.swap(fresh.model)
        except Exception as exc:  # the swapper keeps the old version serving and says why
            log.error("SIGHUP: swap failed", extra={"error": str(exc)})
            return
        self.runtime.settings = current.model_copy(update={"model": fresh.model})

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Unlike uvicorn's own handler, the signal is not recorded for re-raising at exit: a drained
        # shutdown is a clean one and exits 0.
        if self._draining:
            if sig == signal.SIGINT:
                self.force_exit = self.should_exit = True
            return
        self._draining = True
        if self._loop is None:
            self.should_exit = True
            return
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain()))

    def fail(self, reason: str) -> None:
        self.exit_code = 1
        self.should_exit = True

    async def _drain(self) -> None:
        runtime = self.runtime
        runtime.set_phase("draining")
        log.info("draining", extra={"in_flight": runtime.in_flight, "grace_s": self.grace})
        if not await runtime.wait_idle(self.grace):
            log.warning(
                "grace period over; ending requests still running", extra={"in_flight": runtime.in_flight}
            )
            for served in list(runtime.models.values()):
                served.scheduler.stop()
            # Let the ended streams write their last event before the connections close.
            await runtime.wait_idle(2.0)
        self.should_exit = True


def serve(settings: Settings, reload: Callable[[], Settings] | None = None) -> int:
    """Run until drained; return the process exit code. reload reads the settings again (SIGHUP)."""
    runtime = RuntimeState(settings, settings.api_keys(), settings.admin_keys())
    server: DrainingServer | None = None

    def loader(model: ModelSettings) -> ServedModel:
        assert runtime.dispatch is not None, "models load once the event loop runs"
        served = start_served_model(settings, model, runtime.metrics, runtime.dispatch)
        served.scheduler.on_death = on_fatal  # a dead engine makes this replica useless: exit, get restarted
        return served

    def on_fatal(reason: str) -> None:
        assert server is not None
        server.fail(reason)

    app = create_app(runtime, loader, on_fatal)
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_config=None,  # our logging (logs.py) is already configured
        access_log=False,  # the edge middleware logs one line per request, with its id
        timeout_graceful_shutdown=5,
        timeout_keep_alive=30,
    )
    server = DrainingServer(config, runtime, settings.server.shutdown_grace_s, reload or (lambda: settings))
    log.info(
        "starting",
        extra={"host": settings.server.host, "port": settings.server.port, "model": settings.model.path},
    )
    server.run()
    return server.exit_code
