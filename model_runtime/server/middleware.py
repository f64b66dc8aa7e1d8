"""The edge of the server, as one plain ASGI middleware (no per-chunk overhead on streams): request ids,
the body size limit, the request counter by endpoint and status, the in-flight count that graceful
shutdown waits on, and one log line per request."""

from __future__ import annotations

import logging
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model_runtime.logs import request_id
from model_runtime.server.errors import APIError
from model_runtime.server.state import RuntimeState

log = logging.getLogger("model_runtime.access")

GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
KNOWN_PATHS = GENERATION_PATHS | {"/v1/models", "/health/live", "/health/ready", "/metrics"}
REQUEST_ID_HEADER = b"x-request-id"


class BodyTooLarge(HTTPException):
    """Raised while the body streams in; FastAPI passes HTTP exceptions through to the error handler."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, runtime: RuntimeState) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = headers.get(REQUEST_ID_HEADER, b"").decode("latin-1")[:128] or uuid.uuid4().hex
        token = request_id.set(rid)
        path = scope["path"]
        endpoint = path if path in KNOWN_PATHS else "other"
        status = {"code": 500}
        limit = self.runtime.settings.server.max_body_bytes
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, rid.encode("latin-1"))]
            await send(message)

        received = {"bytes": 0}

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                received["bytes"] += len(message.get("body", b""))
                if received["bytes"] > limit:
                    raise BodyTooLarge(limit)
            return message

        counted = path in GENERATION_PATHS
        if counted:
            self.runtime.request_started()
            self.runtime.metrics.in_flight.inc()
        try:
            declared = headers.get(b"content-length", b"0")
            if declared.isdigit() and int(declared) > limit:
                # Refused before a byte of the body is read.
                response = APIError(413, BodyTooLarge(limit).detail, code="request_too_large").response()
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, limited_receive, send_with_id)
        finally:
            if counted:
                self.runtime.request_finished()
                self.runtime.metrics.in_flight.dec()
                self.runtime.metrics.request_seconds.labels(endpoint=endpoint).observe(
                    time.perf_counter() - started
                )
            self.runtime.metrics.requests.labels(endpoint=endpoint, status=str(status["code"])).inc()
            if endpoint != "/metrics" and not endpoint.startswith("/health"):
                log.info(
                    "%s %s %s",
                    scope["method"],
                    path,
                    status["code"],
                    extra={"status": status["code"], "seconds": round(time.perf_counter() - started, 4)},
                )
            request_id.reset(token)
