"""Bearer API keys on the /v1 endpoints; health and metrics stay open for probes and scrapers."""

from __future__ import annotations

import hmac

from fastapi import Request

from model_runtime.server.errors import APIError


def _matches_any(presented: str, keys: frozenset[str]) -> bool:
    # Compare against every key, without stopping at a match, in constant time per key: how long a
    # check takes says nothing about which key, or how much of one, was right.
    found = False
    for key in keys:
        found |= hmac.compare_digest(presented.encode(), key.encode())
    return found


def require_api_key(request: Request) -> None:
    keys: frozenset[str] = request.app.state.runtime.api_keys
    if keys:  # none: the operator chose server.allow_unauthenticated
        check_bearer(request, keys)


def check_bearer(request: Request, keys: frozenset[str]) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if not header:
        raise APIError(
            401,
            "You didn't provide an API key. Send it as a bearer token: 'Authorization: Bearer KEY'.",
            code="missing_api_key",
        )
    if scheme.lower() != "bearer" or not _matches_any(presented.strip(), keys):
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
