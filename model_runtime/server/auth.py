"""Bearer API keys on the /v1 endpoints; health and metrics stay open for probes and scrapers."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from model_runtime.server.errors import APIError


def _matches_any(presented: str, keys: frozenset[str]) -> bool:
    # Compare against every key, without stopping at a match, in constant time per key: how long a
    # check takes says nothing about which key, or how much of one, was right.
    found = False
    for key in keys:
        found |= hmac.compare_digest(presented.encode(), key.encode())
    return found


# Puts the bearer scheme in the OpenAPI document; the check itself is check_bearer's, whose messages
# tell a missing key from a wrong one.
bearer_scheme = HTTPBearer(auto_error=False, description="One of the server's API keys")


def require_api_key(
    request: Request, _declared: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
) -> None:
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
