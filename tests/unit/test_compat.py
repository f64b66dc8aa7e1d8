"""The engine checks' rules (model_runtime/compat.py) with the facts of hosts this machine is not: GPUs,
a driver older than a build's CUDA, a CPU build where GPUs are. tests/integration/test_doctor_engines.py
runs them on this machine's own builds through `model-runtime doctor`."""

from __future__ import annotations

import pytest

from model_runtime.compat import GpuHost, check_architecture, check_builds, driver_cuda
from model_runtime.vllm.probe import VllmBuild

pytestmark = pytest.mark.unit

# The header of nvidia-smi on a host whose driver (570) supports CUDA up to 12.8.
NVIDIA_SMI = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 570.133.20             Driver Version: 570.133.20     CUDA Version: 12.8     |
|-----------------------------------------+------------------------+----------------------+
"""
GPU_HOST = GpuHost(gpus=4, driver_cuda="12.4")
CPU_HOST = GpuHost(gpus=0, driver_cuda=None)
VLLM_CUDA = VllmBuild("0.11.0", "2.8.0+cu128", "12.8", frozenset({"LlamaForCausalLM", "Qwen3ForCausalLM"}))
VLLM_CPU = VllmBuild("0.32.0", "2.13.0+cpu", None, frozenset({"LlamaForCausalLM"}))


def test_the_driver_s_cuda_is_read_from_nvidia_smi() -> None:
    assert driver_cuda(NVIDIA_SMI) == "12.8"
    assert (
        driver_cuda("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.") is None
    )


def test_a_build_for_a_newer_cuda_than_the_driver_fails_saying_what_to_do() -> None:
    status, detail = check_builds(GPU_HOST, "vllm", "2.8.0+cu126", "12.6", VLLM_CUDA)
    assert status == "fail"
    assert "vLLM's torch is built for CUDA 12.8, but the driver supports CUDA 12.4 at most" in detail
    assert "upgrade the driver" in detail
    assert check_builds(GpuHost(4, "12.8"), "vllm", "2.8.0+cu126", "12.6", VLLM_CUDA)[0] == "ok"
    assert check_builds(GpuHost(4, "13.0"), "vllm", "2.8.0+cu126", "12.6", VLLM_CUDA)[0] == "ok"


def test_the_build_must_match_the_host() -> None:
    status, detail = check_builds(GPU_HOST, "vllm", "2.8.0+cu124", "12.4", VLLM_CPU)
    assert (status, detail) == (
        "fail",
        "vLLM's torch is a CPU build, on a host with 4 NVIDIA GPU(s): it would not use them",
    )
    status, detail = check_builds(CPU_HOST, "vllm", "2.13.0+cpu", None, VLLM_CUDA)
    assert (status, detail) == (
        "fail",
        "vLLM's torch is built for CUDA 12.8, on a host without an NVIDIA GPU",
    )
    status, detail = check_builds(CPU_HOST, "vllm", "2.13.0+cpu", None, VLLM_CPU)
    assert status == "ok"
    assert detail == "vllm engine: torch 2.13.0+cpu; vLLM 0.32.0 (torch 2.13.0+cpu, CPU build); no NVIDIA GPU"


def test_the_other_engine_s_build_is_only_a_warning() -> None:
    # builtin is what runs: vLLM's unusable build matters only once the engine changes to it.
    status, detail = check_builds(CPU_HOST, "builtin", "2.13.0+cpu", None, VLLM_CUDA)
    assert status == "warn"
    assert detail.startswith("builtin engine fits")
    assert "vLLM's torch is built for CUDA 12.8, on a host without an NVIDIA GPU" in detail
    # The runtime's own torch on a GPU host, built for the driver's CUDA: fine without vLLM.
    assert check_builds(GPU_HOST, "builtin", "2.8.0+cu124", "12.4", None) == (
        "ok", "builtin engine: torch 2.8.0+cu124; 4 NVIDIA GPU(s), driver's CUDA 12.4"
    )  # fmt: skip


def test_the_architecture_against_the_engine_s_list() -> None:
    builtin = ["LlamaForCausalLM", "GPT2LMHeadModel"]
    assert check_architecture(["Qwen3ForCausalLM"], "vllm", builtin, VLLM_CUDA)[0] == "ok"
    status, detail = check_architecture(["Qwen3ForCausalLM"], "builtin", builtin, VLLM_CUDA)
    assert (status, detail) == (
        "fail",
        "Qwen3ForCausalLM: the builtin engine (transformers) does not implement it",
    )
    status, detail = check_architecture(["GPT2LMHeadModel"], "vllm", builtin, VLLM_CPU)
    assert status == "fail"
    assert detail == "GPT2LMHeadModel: vLLM 0.32.0 (torch 2.13.0+cpu, CPU build) does not implement it"
    assert check_architecture([], "builtin", builtin, None)[0] == "warn"
