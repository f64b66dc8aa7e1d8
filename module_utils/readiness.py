"""The readiness probe of a model-runtime instance (or of a load balancer in front of instances): its
/health/ready answers 200. One piece of code for the runtime_ready module (Ansible ships this file with
it, as ansible.module_utils.readiness) and the tests. Standard library only, because it runs on the
hosts where the instances run."""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable

READY_PATH = "/health/ready"
POLL_S = 1.0


class NotReady(Exception):
    """The instance did not answer ready in time."""


def ready_url(base_url: str) -> str:
    return base_url.rstrip("/") + READY_PATH


def is_ready(url: str, tls: ssl.SSLContext | None = None, timeout_s: float = 5) -> bool:
    """One probe: True when the URL answers 200; any other status, or no answer, is not ready."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=tls) as response:  # noqa: S310 - our URL
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(
    url: str,
    timeout_s: float,
    tls: ssl.SSLContext | None = None,
    between: Callable[[], None] | None = None,
    poll_s: float = POLL_S,
) -> float:
    """Probe until the URL answers ready; return the seconds it took. `between` runs after each failed
    probe, and raises to end the wait early (the process it waits for died, say). NotReady after
    timeout_s seconds."""
    started = time.monotonic()
    while not is_ready(url, tls):
        if between is not None:
            between()
        if time.monotonic() - started > timeout_s:
            raise NotReady(f"{url} not ready after {timeout_s:.0f}s")
        time.sleep(poll_s)
    return time.monotonic() - started
