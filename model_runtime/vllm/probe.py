"""What a vLLM environment holds, asked of its own interpreter (vLLM is not importable from ours): the
vLLM and torch versions, the CUDA that torch was built for (none: the CPU build) and the model
architectures vLLM implements. For `model-runtime doctor`."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from model_runtime.vllm.interpreter import foreign_environment

# Run by vLLM's interpreter; prints one JSON object.
_SCRIPT = """
import json, torch, vllm
from vllm.model_executor.models import ModelRegistry
print(json.dumps({"vllm": vllm.__version__, "torch": torch.__version__, "cuda": torch.version.cuda,
                  "architectures": sorted(ModelRegistry.get_supported_archs())}))
"""


class VllmProbeError(Exception):
    """The environment could not say what it holds (missing, broken, too slow)."""


@dataclass(frozen=True)
class VllmBuild:
    vllm: str
    torch: str
    cuda: str | None  # the CUDA version vLLM's torch was built for; None for the CPU build
    architectures: frozenset[str]

    def describe(self) -> str:
        build = f"CUDA {self.cuda} build" if self.cuda else "CPU build"
        return f"vLLM {self.vllm} (torch {self.torch}, {build})"


def probe(python: Path, timeout_s: float = 120.0) -> VllmBuild:
    """Ask python (vLLM's environment's interpreter) what it holds; importing vLLM takes seconds."""
    env = foreign_environment(os.environ)
    try:
        command = [str(python), "-c", _SCRIPT]
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VllmProbeError(f"{python}: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise VllmProbeError(f"{python} could not import vLLM: {last[0]}")
    try:
        found = json.loads(done.stdout.strip().splitlines()[-1])
        return VllmBuild(found["vllm"], found["torch"], found["cuda"], frozenset(found["architectures"]))
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise VllmProbeError(f"{python} answered something else than vLLM's build: {exc}") from None
