"""The edge of the server, as one plain ASGI middleware (no per-chunk overhead on streams): which paths
each listener serves, the bearer key and the body size limit (both before a byte of the body is read),
request ids, the request counter by endpoint and status, the in-flight count that graceful shutdown
waits on, and one log line per request."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model_runtime.access import OPEN, KeyPolicy
from model_runtime.logs import request_id
from model_runtime.server.auth import check_bearer
from model_runtime.server.errors import APIError, path_not_found
from model_runtime.server.state import RuntimeState

log = logging.getLogger("model_runtime.access")

GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
KNOWN_PATHS = GENERATION_PATHS | {"/v1/models", "/health/live", "/health/ready", "/metrics"}
# The internal listener's own paths; /health/ is on both listeners, /v1/ on the public one only.
INTERNAL_PATHS = frozenset({"/metrics", "/openapi.json"})
REQUEST_ID_HEADER = b"x-request-id"


class BodyTooLarge(HTTPException):
    """Raised while the body streams in; FastAPI passes HTTP exceptions through to the error handler."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


def served_on(path: str, internal: bool) -> bool:
    """Whether a listener serves a path. The path is the decoded one (`/%61dmin` is `/admin` here), and
    routes match it exactly, so a prefix decides: the public listener serves what the load balancers
    forward (the API and health), the internal one metrics, admin, the OpenAPI document and health."""
    if path.startswith("/health/"):
        return True
    if internal:
        return path in INTERNAL_PATHS or path.startswith("/admin/")
    return path.startswith("/v1/")


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, runtime: RuntimeState, internal_port: int | None = None) -> None:
        """internal_port: the port of the internal listener (None: there is none, as in tests that drive
        the app in process); a request's listener is known by the local port it arrived on."""
        self.app = app
        self.runtime = runtime
        self.internal_port = internal_port

    def _refusal(self, scope: Scope, path: str, headers: dict[bytes, bytes]) -> APIError | None:
        """What to answer without running the app, or None to run it (then the request's state holds the
        policy of its key, `key_policy`: the open one where no key is asked for)."""
        server = scope.get("server")
        internal = self.internal_port is not None and server is not None and server[1] == self.internal_port
        if not served_on(path, internal):
            return path_not_found()
        runtime = self.runtime
        keys: Mapping[str, KeyPolicy] = (
            runtime.api_keys if path.startswith("/v1/")
            else runtime.admin_keys if path.startswith("/admin/")
            else {}
        )  # fmt: skip
        # No API keys: the operator chose server.allow_unauthenticated. No admin keys: /admin is off, and
        # routing answers 404.
        policy = OPEN
        if keys:
            try:
                policy = check_bearer(headers.get(b"authorization", b"").decode("latin-1"), keys)
            except APIError as refused:
                return refused
        scope.setdefault("state", {})["key_policy"] = policy
        limit = runtime.settings.server.max_body_bytes
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > limit:
            return APIError(413, BodyTooLarge(limit).detail, code="request_too_large")
        return None

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
            refusal = self._refusal(scope, path, headers)
            if refusal is not None:
                # Answered before a byte of the body is read.
                await refusal.response()(scope, receive, send_with_id)
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
