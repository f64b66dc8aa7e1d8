"""Whether this host can run the model on the engine it would get: the NVIDIA driver's CUDA against the
CUDA that torch (the runtime's, and vLLM's) was built for, vLLM's build (CPU or CUDA) against the host,
and the model's architecture against what the engine implements. The engine checks of `model-runtime
doctor`: rules over facts doctor reads from the host, so that each rule is tested with the facts of
hosts this machine is not (a GPU, a driver older than the build)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from model_runtime.vllm.probe import VllmBuild

Severity = Literal["ok", "warn", "fail", "skip"]
# nvidia-smi's header names the newest CUDA its driver supports.
_DRIVER_CUDA = re.compile(r"CUDA Version:\s*(\d+\.\d+)")


@dataclass(frozen=True)
class GpuHost:
    gpus: int  # NVIDIA devices on the PCI bus
    driver_cuda: str | None  # the newest CUDA the driver supports; None without a working driver


def driver_cuda(nvidia_smi_output: str) -> str | None:
    found = _DRIVER_CUDA.search(nvidia_smi_output)
    return found.group(1) if found else None


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2])


def build_problems(host: GpuHost, what: str, cuda: str | None) -> list[str]:
    """What is wrong with a torch build (the runtime's, or vLLM's: `what`) on this host."""
    if host.gpus and cuda is None:
        return [f"{what} is a CPU build, on a host with {host.gpus} NVIDIA GPU(s): it would not use them"]
    if cuda is not None and not host.gpus:
        return [f"{what} is built for CUDA {cuda}, on a host without an NVIDIA GPU"]
    if cuda is not None and host.driver_cuda is not None and _version(cuda) > _version(host.driver_cuda):
        return [
            f"{what} is built for CUDA {cuda}, but the driver supports CUDA {host.driver_cuda} at most: "
            "upgrade the driver (driver-upgrade.yml) or take a build for that CUDA"
        ]
    return []


def check_builds(
    host: GpuHost, engine: str, torch_version: str, torch_cuda: str | None, vllm: VllmBuild | None
) -> tuple[Severity, str]:
    """The builds the chosen engine runs on (engine: builtin or vllm) against the host. A problem of
    the other engine's build is a warning: nothing runs on it until the engine changes."""
    runtime = build_problems(host, f"the runtime's torch {torch_version}", torch_cuda)
    vllm_side = build_problems(host, "vLLM's torch", vllm.cuda) if vllm else []
    ours, other = (vllm_side, runtime) if engine == "vllm" else (runtime, vllm_side)
    gpus = f"{host.gpus} NVIDIA GPU(s), driver's CUDA {host.driver_cuda}" if host.gpus else "no NVIDIA GPU"
    builds = f"torch {torch_version}" + (f"; {vllm.describe()}" if vllm else "")
    if ours:
        return "fail", "; ".join(ours)
    if other:
        return "warn", f"{engine} engine fits ({builds}, {gpus}); not the other: " + "; ".join(other)
    return "ok", f"{engine} engine: {builds}; {gpus}"


def check_architecture(
    architectures: Iterable[str], engine: str, builtin_known: Iterable[str], vllm: VllmBuild | None
) -> tuple[Severity, str]:
    """The model's architectures (config.json) against the engine's list: transformers' causal language
    models for the builtin engine, vLLM's own registry for vllm."""
    named = list(architectures)
    if not named:
        return "warn", "config.json names no architecture: the engine guesses from model_type"
    known = vllm.architectures if engine == "vllm" and vllm else frozenset(builtin_known)
    who = vllm.describe() if engine == "vllm" and vllm else "the builtin engine (transformers)"
    if any(name in known for name in named):
        return "ok", f"{', '.join(named)}: {who} implements it"
    return "fail", f"{', '.join(named)}: {who} does not implement it"
