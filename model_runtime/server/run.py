"""Running the server process: uvicorn on two listeners, with a graceful drain on SIGTERM.

The public listener (server.host, server.port) serves the API and health; the internal one
(server.metrics_host, server.metrics_port, loopback or a private address) serves metrics, admin and the
OpenAPI document. One server, one event loop and one drain serve both.

On SIGTERM (or Ctrl-C) readiness turns 503 at once and new generation requests are refused with 503,
while requests in flight, streams included, run to their end for up to server.shutdown_grace_s. Then
the process exits 0. A second Ctrl-C forces the exit. A model that fails to load exits 1, so the
service manager sees the failure.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from types import FrameType
from typing import cast

import uvicorn
from fastapi import FastAPI

from model_runtime.config import ConfigError, ModelSettings, Settings
from model_runtime.server.app import create_app
from model_runtime.server.hook import NO_PLUGIN, Plugin
from model_runtime.server.starts import count_start
from model_runtime.server.state import RuntimeState, ServedModel, start_served_model

log = logging.getLogger(__name__)

# TLS 1.2 suites the server accepts (TLS 1.3's are all forward-secret AEAD already).
TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


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
        app = cast(FastAPI, self.config.app)  # serve() hands uvicorn the app itself
        try:
            await app.state.swapper.swap(fresh.model)
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


def listen(setting: str, host: str, port: int) -> socket.socket:
    """A listening socket, or a ConfigError naming the setting (a port taken, an address not here)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)  # SO_REUSEADDR, as uvicorn's own
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def serve(
    settings: Settings, reload: Callable[[], Settings] | None = None, plugin: Plugin = NO_PLUGIN
) -> int:
    """Run until drained; return the process exit code. reload reads the settings again (SIGHUP);
    plugin serves formats beyond the engine's own (the CLI passes the ensemble package's)."""
    starts = count_start(settings.server.state_dir)
    public = listen("server.port", settings.server.host, settings.server.port)
    try:
        internal = listen("server.metrics_port", settings.server.metrics_host, settings.server.metrics_port)
    except ConfigError:
        public.close()
        raise
    runtime = RuntimeState(settings, settings.api_keys(), settings.admin_keys())
    runtime.metrics.process_starts.inc(starts)
    server: DrainingServer | None = None

    def loader(model: ModelSettings) -> ServedModel:
        assert runtime.dispatch is not None, "models load once the event loop runs"
        served = start_served_model(settings, model, runtime.metrics, runtime.dispatch, plugin)
        served.scheduler.on_death = on_fatal  # a dead engine makes this replica useless: exit, get restarted
        return served

    def on_fatal(reason: str) -> None:
        assert server is not None
        server.fail(reason)

    app = create_app(runtime, loader, on_fatal, internal_port=internal.getsockname()[1])
    config = uvicorn.Config(
        app,  # on the sockets bound above: uvicorn's own host and port settings are unused
        log_config=None,  # our logging (logs.py) is already configured
        access_log=False,  # the edge middleware logs one line per request, with its id
        timeout_graceful_shutdown=5,
        timeout_keep_alive=30,
        # TLS on both listeners when a certificate is configured: forward-secret AEAD suites only.
        ssl_certfile=settings.server.tls_certfile,
        ssl_keyfile=settings.server.tls_keyfile,
        ssl_ciphers=TLS_CIPHERS,
    )
    server = DrainingServer(config, runtime, settings.server.shutdown_grace_s, reload or (lambda: settings))
    log.info(
        "starting",
        extra={
            "host": settings.server.host,
            "port": public.getsockname()[1],
            "metrics_host": settings.server.metrics_host,
            "metrics_port": internal.getsockname()[1],
            "model": settings.model.path,
        },
    )
    server.run(sockets=[public, internal])
    return server.exit_code
