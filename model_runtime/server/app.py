"""The FastAPI application: routers, auth, error handlers, the edge middleware, and model loading in
the background so that liveness answers while the model loads and readiness tells when it is done.

One app answers on two listeners (run.py binds both): the public one serves /v1 and /health, the
internal one /metrics, /admin, /openapi.json and /health; the edge middleware tells them apart."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from model_runtime import __version__
from model_runtime.config import ModelSettings
from model_runtime.server import admin, chat, completions, health, metrics, models
from model_runtime.server.auth import declare_api_key
from model_runtime.server.errors import install_error_handlers
from model_runtime.server.middleware import EdgeMiddleware
from model_runtime.server.openapi import (
    CHAT_RESPONSES,
    COMPLETION_RESPONSES,
    MODELS_RESPONSES,
    install_openapi,
)
from model_runtime.server.state import RuntimeState, ServedModel, loop_dispatch
from model_runtime.server.swap import Swapper

log = logging.getLogger(__name__)

Loader = Callable[[ModelSettings], ServedModel]


async def _load(runtime: RuntimeState, loader: Loader, on_fatal: Callable[[str], None]) -> None:
    try:
        served = await asyncio.to_thread(loader, runtime.settings.model)
    except Exception as exc:
        log.exception("model failed to load")  # the reason goes to the log; readiness says "failed"
        runtime.set_phase("failed")
        on_fatal(str(exc))
        return
    runtime.models[served.name] = served
    if runtime.phase == "loading":
        runtime.set_phase("ready")
        log.info("ready", extra={"model": served.name, "version": served.version})


def create_app(
    runtime: RuntimeState, loader: Loader, on_fatal: Callable[[str], None], internal_port: int | None = None
) -> FastAPI:
    """internal_port: the internal listener's port (see middleware.served_on); None serves every path
    as the public listener does."""

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
    install_openapi(app)
    for router, responses in (
        (completions.router, COMPLETION_RESPONSES),
        (chat.router, CHAT_RESPONSES),
        (models.router, MODELS_RESPONSES),
    ):
        app.include_router(router, dependencies=[Depends(declare_api_key)], responses=responses)
    if runtime.admin_keys:
        app.include_router(admin.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.add_middleware(EdgeMiddleware, runtime=runtime, internal_port=internal_port)
    return app
