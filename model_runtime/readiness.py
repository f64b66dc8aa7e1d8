"""The readiness probe of a model-runtime instance (or of a load balancer in front of instances): its
/health/ready answers 200. The one probe for everything that asks: `model-runtime doctor`, the
runtime_ready Ansible module, the harness and the tests.

Standard library only, and no import of model_runtime: Ansible ships this same file to the hosts with
the runtime_ready module (module_utils/readiness.py is a link to it, imported there as
ansible.module_utils.readiness), where the interpreter that runs modules has no model_runtime.
"""

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


def answer(url: str, timeout_s: float, tls: ssl.SSLContext | None = None) -> tuple[int, str]:
    """(status, body) of a GET; HTTP error statuses are answers too. OSError when nothing answers."""
    try:
        # S310: callers pass the http(s) URL of an instance or a load balancer they configured.
        with urllib.request.urlopen(url, timeout=timeout_s, context=tls) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def is_ready(url: str, tls: ssl.SSLContext | None = None, timeout_s: float = 5) -> bool:
    """One probe: True when the URL answers 200; any other status, or no answer, is not ready."""
    try:
        return answer(url, timeout_s, tls)[0] == 200
    except OSError:
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
