"""requirements/server.lock: every runtime dependency of pyproject.toml pinned, with its hash, at a
version its specifier allows (a dependency change without `python scripts/lock.py` fails here)."""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from harness import REPO

pytestmark = pytest.mark.unit

LOCK_LINE = re.compile(r"^([a-z0-9][a-z0-9.-]*)==(\S+) --hash=sha256:[0-9a-f]{64}$")


def locked() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / "server.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            match = LOCK_LINE.match(line)
            assert match, f"not a pinned, hashed requirement: {line}"
            pins[match.group(1)] = match.group(2)
    return pins


def test_every_runtime_dependency_is_locked_at_an_allowed_version() -> None:
    pins = locked()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name == "torch":  # chosen per host, never locked
            assert name not in pins
            continue
        assert name in pins, f"{name} is a dependency but not in requirements/server.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])
