"""The FastAPI application: routers, auth, error handlers, the edge middleware, and model loading in
the background so that liveness answers while the model loads and readiness tells when it is done."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from model_runtime import __version__
from model_runtime.config import ModelSettings
from model_runtime.server import admin, chat, completions, health, metrics, models
from model_runtime.server.auth import require_api_key
from model_runtime.server.errors import install_error_handlers
from model_runtime.server.middleware import EdgeMiddleware
from model_runtime.server.protocol import ErrorResponse
from model_runtime.server.state import RuntimeState, ServedModel, loop_dispatch
from model_runtime.server.swap import Swapper

log = logging.getLogger(__name__)

Loader = Callable[[ModelSettings], ServedModel]

# Documented on every /v1 operation so the OpenAPI document lists the error envelope.
ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Invalid request; `param` names the offending field",
        401: "Missing or wrong API key",
        404: "Unknown model",
        413: "Request body too large",
        429: "Queue full; see Retry-After",
        503: "Not ready, draining, or no slot in time; see Retry-After",
        504: "Request ran past the server's time limit",
    }.items()
}


async def _load(runtime: RuntimeState, loader: Loader, on_fatal: Callable[[str], None]) -> None:
    try:
        served = await asyncio.to_thread(loader, runtime.settings.model)
    except Exception as exc:
        log.exception("model failed to load")
        runtime.set_phase("failed", f"{type(exc).__name__}: {exc}")
        on_fatal(str(exc))
        return
    runtime.models[served.name] = served
    if runtime.phase == "loading":
        runtime.set_phase("ready")
        log.info("ready", extra={"model": served.name, "version": served.version})


def create_app(runtime: RuntimeState, loader: Loader, on_fatal: Callable[[str], None]) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.dispatch = loop_dispatch(asyncio.get_running_loop())
        app.state.swapper = Swapper(runtime, loader)
        task = asyncio.create_task(_load(runtime, loader, on_fatal))
        yield
        task.cancel()
        await asyncio.to_thread(runtime.close)

    app = FastAPI(
        title="model-runtime",
        version=__version__,
        summary="OpenAI-compatible serving of language models",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    for router in (completions.router, chat.router, models.router):
        app.include_router(router, dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)
    if runtime.admin_keys:
        app.include_router(admin.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.add_middleware(EdgeMiddleware, runtime=runtime)
    return app
