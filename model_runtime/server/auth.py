"""Bearer keys: the API keys on /v1, the admin keys on /admin; health and metrics stay open for probes
and scrapers. The edge middleware checks the key before a byte of the body is read (a request without
a key gets 401 whatever its body); the dependency below only declares the scheme in the OpenAPI
document."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Security
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


def declare_api_key(
    _declared: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
) -> None:
    """The /v1 routes' dependency: the bearer scheme in the document (the middleware checked the key)."""


def check_bearer(header: str, keys: frozenset[str]) -> None:
    """Raise a 401 unless the Authorization header value carries one of keys as a bearer token."""
    scheme, _, presented = header.partition(" ")
    if not header:
        raise APIError(
            401,
            "You didn't provide an API key. Send it as a bearer token: 'Authorization: Bearer KEY'.",
            code="missing_api_key",
        )
    if scheme.lower() != "bearer" or not _matches_any(presented.strip(), keys):
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
