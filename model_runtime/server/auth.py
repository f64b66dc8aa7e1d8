"""Bearer keys: the API keys on /v1, the admin keys on /admin; health and metrics stay open for probes
and scrapers. The edge middleware checks the key before a byte of the body is read (a request without
a key gets 401 whatever its body); the dependency below only declares the scheme in the OpenAPI
document."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Annotated, TypeVar

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from model_runtime.access import OPEN, KeyPolicy
from model_runtime.server.errors import APIError

P = TypeVar("P")


def _match(presented: str, keys: Mapping[str, P]) -> P | None:
    # Compare against every key, without stopping at a match, in constant time per key: how long a
    # check takes says nothing about which key, or how much of one, was right.
    found = None
    for key, policy in keys.items():
        if hmac.compare_digest(presented.encode(), key.encode()):
            found = policy
    return found


# Puts the bearer scheme in the OpenAPI document; the check itself is check_bearer's, whose messages
# tell a missing key from a wrong one.
bearer_scheme = HTTPBearer(auto_error=False, description="One of the server's API keys")


def declare_api_key(
    _declared: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
) -> None:
    """The /v1 routes' dependency: the bearer scheme in the document (the middleware checked the key)."""


def check_bearer(header: str, keys: Mapping[str, P]) -> P:
    """What keys hold for the bearer token of the Authorization header value (a key's policy); a 401
    unless it is one of keys."""
    scheme, _, presented = header.partition(" ")
    if not header:
        raise APIError(
            401,
            "You didn't provide an API key. Send it as a bearer token: 'Authorization: Bearer KEY'.",
            code="missing_api_key",
        )
    policy = _match(presented.strip(), keys) if scheme.lower() == "bearer" else None
    if policy is None:
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    return policy


def key_policy(request: Request) -> KeyPolicy:
    """The policy of the key a request came with (the edge middleware found it)."""
    policy: KeyPolicy = getattr(request.state, "key_policy", OPEN)
    return policy
