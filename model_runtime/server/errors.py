"""The one error factory: every failure leaves the server as an OpenAI error envelope.

`{"error": {"message", "type", "param", "code"}}`, with the status, type and code of each internal
exception fixed in one table below, so that the same failure always looks the same to a client.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model_runtime.scheduler.events import (
    EngineError,
    EngineStalled,
    QueueFull,
    QueueTimeout,
    RequestTimeout,
    SchedulerClosed,
)

log = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(int(self.retry_after))} if self.retry_after is not None else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


# Why a replica takes no traffic, in fixed words: readiness bodies and refusals carry these, never an
# exception's text (that goes to the log).
NOT_READY_MESSAGES = {
    "loading": "the model is still loading",
    "draining": "the server is shutting down and takes no new requests",
    "failed": "the model failed to load",
    "swapping": "the model is being replaced (a drained restart); this replica takes no new requests",
    "stalled": "the engine has completed no step for too long; this replica takes no new requests",
}


def path_not_found() -> APIError:
    """An unknown path, or one not served on this listener; load balancers answer the same for what
    they do not forward, so a client sees one 404 whoever sent it."""
    return APIError(404, "Not Found", code="not_found")


def model_not_found(name: str) -> APIError:
    """A model this runtime does not serve, or one the key may not use; the load balancers that route by
    model answer the same for a model the fleet does not serve."""
    return APIError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")


def model_not_found_body(name_expression: str) -> str:
    """model_not_found's body as JSON text, name_expression in place of the name: a load balancer's
    expression that writes the requested name escaped for a JSON string (HAProxy's json converter)."""
    hole = "@@model@@"
    return json.dumps(model_not_found(hole).body()).replace(hole, name_expression)


def not_ready(reason: str, retry_after: float = 5) -> APIError:
    """503 while loading, draining, failed or stalled: a fast refusal, so the load balancer and clients
    go elsewhere (HAProxy retries exactly these on another replica)."""
    code = "engine_stalled" if reason == "stalled" else reason
    return APIError(
        503, NOT_READY_MESSAGES[reason], "service_unavailable", code=code, retry_after=retry_after
    )


def from_exception(exc: Exception) -> APIError:
    """The fixed exception-to-status table for failures raised below the HTTP layer."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFull):
        return APIError(429, str(exc), "rate_limit_error", code="queue_full", retry_after=exc.retry_after)
    if isinstance(exc, QueueTimeout):
        # Overload, as a full queue is: 429, which no load balancer retries. A 503 here would be
        # retried on every replica, each after its own queue timeout.
        return APIError(429, str(exc), "rate_limit_error", code="queue_timeout", retry_after=exc.retry_after)
    if isinstance(exc, SchedulerClosed):
        return APIError(503, str(exc), "service_unavailable", code="model_unloading", retry_after=1)
    if isinstance(exc, RequestTimeout):
        return APIError(504, str(exc), "timeout_error", code="request_timeout")
    if isinstance(exc, EngineStalled):
        return APIError(503, str(exc), "service_unavailable", code="engine_stalled", retry_after=1)
    if isinstance(exc, EngineError):
        return APIError(500, str(exc), "server_error", code="engine_error")
    log.error("unhandled error", exc_info=exc)
    return APIError(500, "internal server error", "server_error", code="internal_error")


_UNION_TAGS = ("str", "int", "float", "bool", "list", "dict", "none", "literal")


def param_path(loc: Sequence[str | int]) -> str | None:
    """('body', 'messages', 0, 'content') -> 'messages[0].content'; pydantic's union-member tags dropped."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path") else loc)
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.split("[", 1)[0].lower() in _UNION_TAGS or "[" in part or "-" in part:
            break  # pydantic names the union member it tried; the field path ends here
        else:
            path += f".{part}" if path else part
    return path or None


# Starlette types every handler as taking any Exception; each is registered for its own class.
def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first["type"] == "json_invalid":
        return bad_request(
            "We could not parse the JSON body of your request.", None, "invalid_json"
        ).response()
    param = param_path(first["loc"])
    if first["type"] == "missing":
        # No param: the body itself is missing.
        message = f"{param} is required" if param else "the request body (a JSON object) is required"
    elif first["type"] == "model_attributes_type":
        message = "the request body must be a JSON object"
        if "json" not in request.headers.get("content-type", ""):
            # FastAPI reads a body of any other type as bytes, which then fails as "not an object".
            message += ", sent with Content-Type: application/json"
    else:
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
        if "input" in first and not isinstance(first["input"], dict | list):
            message += f" (got {first['input']!r:.80})"
    return bad_request(message, param, "invalid_value").response()


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
    response = APIError(exc.status_code, str(exc.detail), code=codes.get(exc.status_code)).response()
    # Starlette's own headers, such as the Allow that a 405 must carry (RFC 9110).
    response.headers.update(exc.headers or {})
    return response


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, lambda request, exc: exc.response())
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, lambda request, exc: from_exception(exc).response())
