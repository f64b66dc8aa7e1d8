"""The build cache under .cache/ (the demo model, ensemble members, the fleet's wheelhouse, vLLM's
environment): each entry is built by one process at a time, while the others that need it (the test
workers of `make test`, a benchmark started beside them) wait, then find it built."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager

from harness import REPO

CACHE = REPO / ".cache"


@contextmanager
def one_builder(entry: str) -> Iterator[None]:
    """Hold entry's lock (.cache/<entry>.lock) while checking and, when it is missing, building it."""
    CACHE.mkdir(exist_ok=True)
    with (CACHE / f"{entry}.lock").open("w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # released when the file closes
        yield
