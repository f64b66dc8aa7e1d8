"""The OpenAPI document as the server really answers, so that generated clients and the schema fuzzer
(tests/e2e/test_fuzz_api.py) can hold the server to it.

FastAPI's own document falls short here in five ways, which the tables and `install_openapi` below
mend: it lists a 422 `HTTPValidationError` that is never sent (errors.py answers every validation
failure with a 400 envelope); it knows nothing of `Retry-After` on 429 and 503; it describes a
generation's 200 as JSON only, while `stream: true` answers with server-sent events (each event's
`data` is described: a chunk, an error envelope, or `[DONE]`); it cannot see the limits that the
endpoints enforce in code rather than in the pydantic models; and it holds every numeric bound as a
float, so that the seed's maximum 2**63 - 1 would read 9.223372036854776e+18, past 2**63.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from model_runtime.config import Settings
from model_runtime.server.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    CompletionChunk,
    CompletionRequest,
    ErrorResponse,
)

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Whole seconds to wait before sending the request again",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}


def _error(description: str, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {"model": ErrorResponse, "description": description}
    if retry_after:
        response["headers"] = _RETRY_AFTER
    return response


# Every /v1 operation: the key is checked first, and the body limit applies before any route runs.
_AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _error("Missing or wrong API key"),
    413: _error("Request body too large"),
}

MODELS_RESPONSES = _AUTH_RESPONSES


def _stream_event(chunk: type[BaseModel]) -> dict[str, Any]:
    """One server-sent event of a stream: `data` is a chunk, an error envelope (a failure after the
    headers went out), or the closing `[DONE]`."""
    payload = {"anyOf": [{"$ref": _ref(chunk)}, {"$ref": _ref(ErrorResponse)}]}
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "anyOf": [
                    {"const": "[DONE]"},
                    {"type": "string", "contentMediaType": "application/json", "contentSchema": payload},
                ]
            }
        },
    }


def _ref(model: type[BaseModel]) -> str:
    return f"#/components/schemas/{model.__name__}"


def _generation_responses(chunk: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": "The completion: one JSON body, or with `stream: true` server-sent events",
            "content": {"text/event-stream": {"schema": _stream_event(chunk)}},
        },
        400: _error("Invalid request; `param` names the offending field"),
        **_AUTH_RESPONSES,
        404: _error("Unknown model"),
        429: _error("Queue full, or no batch slot in time (overload)", retry_after=True),
        503: _error("Not ready, draining, or the engine stalled", retry_after=True),
        504: _error("Request ran past the server's time limit"),
    }


COMPLETION_RESPONSES = _generation_responses(CompletionChunk)
CHAT_RESPONSES = _generation_responses(ChatCompletionChunk)
_CHUNKS = (CompletionChunk, ChatCompletionChunk)
_REQUESTS = (CompletionRequest, ChatCompletionRequest)

_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")

# Limits the endpoints enforce in their own code, each with a 400 that names the parameter in words
# for the client, rather than in the pydantic models: written into the document so that it says what
# is accepted. Per request schema and property, keywords added to every part of that type within it.
_NON_EMPTY_PROMPT = {"string": {"minLength": 1}, "array": {"minItems": 1}, "integer": {"minimum": 0}}
_ENFORCED: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "CompletionRequest": {
        "prompt": _NON_EMPTY_PROMPT,
        "echo": {"boolean": {"enum": [False]}},
        "suffix": {"string": {"maxLength": 0}},
    },
    "ChatCompletionRequest": {
        "messages": {"array": {"minItems": 1}},
        "tools": {"array": {"maxItems": 0}},
        "response_format": {"object": {"properties": {"type": {"enum": ["text"]}}}},
    },
}


def _tighten(schema: dict[str, Any], keywords: dict[str, dict[str, Any]]) -> None:
    for variant in schema.get("anyOf", []):
        _tighten(variant, keywords)
    schema.update(keywords.get(schema.get("type", ""), {}))
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _tighten(schema[key], keywords)


def _pydantic_schemas(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
    """A model's schema and those it refers to, by component name."""
    generated = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)
    return {**generated.pop("$defs", {}), model.__name__: generated}


def _configured(settings: Settings) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """The limits this server's settings set, in the form of _ENFORCED."""
    n = {"n": {"integer": {"maximum": settings.scheduler.max_n}}}
    return {request.__name__: n for request in _REQUESTS}


def _as_answered(document: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Drop FastAPI's 422 responses and their schemas (validation failures are 400 envelopes here), and
    write in the limits enforced outside the models."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for name in _VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    for chunk in _CHUNKS:  # referenced from the stream descriptions only, so FastAPI leaves them out
        for name, schema in _pydantic_schemas(chunk, "serialization").items():
            schemas.setdefault(name, schema)
    for request in _REQUESTS:  # as pydantic writes them, with integer bounds exact
        schemas.update(_pydantic_schemas(request, "validation"))
    for limits in (_ENFORCED, _configured(settings)):
        for name, properties in limits.items():
            for prop, keywords in properties.items():
                _tighten(schemas[name]["properties"][prop], keywords)
    return document


def install_openapi(app: FastAPI) -> None:
    """Serve the corrected document at /openapi.json (built once, on first request)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _as_answered(generate(), app.state.runtime.settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
