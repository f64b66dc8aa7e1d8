"""Conversions as registry operations: each produces a new version whose recorded checks hold when
measured again, and which a server loads by reference; a conversion under the threshold pushes
nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from harness.server import RuntimeProcess
from model_runtime.config import ModelSettings
from model_runtime.convert.checks import measure
from model_runtime.corpus import load_corpus
from model_runtime.registry.registry import Registry

pytestmark = pytest.mark.integration


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "model_runtime", *args], capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def registry(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("registry") / "models"
    pushed = cli("registry", "--registry", str(root), "push", "demo", str(demo_model), "--alias", "stable")
    assert pushed.returncode == 0, pushed.stderr
    # A PyTorch pickle of the same model, as its own name, for the "to safetensors" conversion.
    pickle = tmp_path_factory.mktemp("pickle")
    torch.save(AutoModelForCausalLM.from_pretrained(demo_model).state_dict(), pickle / "pytorch_model.bin")
    for name in (
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
    ):
        shutil.copy(demo_model / name, pickle / name)
    pushed = cli("registry", "--registry", str(root), "push", "demo-pickle", str(pickle), "--alias", "stable")
    assert pushed.returncode == 0, pushed.stderr
    return root


@pytest.mark.parametrize(
    ("source", "target", "dtype"),
    [
        ("demo-pickle@stable", "safetensors", "auto"),
        ("demo@stable", "bf16", "bfloat16"),
        ("demo@stable", "int8", "auto"),
        ("demo@stable", "onnx", "auto"),
        ("demo@stable", "gguf", "auto"),
    ],
)
def test_conversion_is_a_new_version_whose_checks_hold(
    registry: Path, tmp_path: Path, source: str, target: str, dtype: str
) -> None:
    done = cli(
        "registry", "--registry", str(registry), "convert", source, "--to", target, "--min-agreement", "0.5"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    name, version = result["version"].split(":")
    store = Registry.open(str(registry))
    manifest = store.manifest(name, version)
    assert manifest["lineage"]["parent"].startswith(f"{name}:")
    assert manifest["lineage"]["conversion"] == target
    recorded = manifest["checks"]

    source_folder, target_folder = tmp_path / "source", tmp_path / "target"
    store.pull(manifest["lineage"]["parent"], source_folder)
    store.pull(f"{name}:{version}", target_folder)
    again = measure(
        ModelSettings(path=str(source_folder), device="cpu"),
        ModelSettings(path=str(target_folder), device="cpu", dtype=dtype),
        load_corpus().held_out,
    )
    assert again.top1_agreement == pytest.approx(recorded["top1_agreement"], abs=0.02)
    assert again.max_abs_logit_diff == pytest.approx(recorded["max_abs_logit_diff"], rel=0.1, abs=1e-3)
    assert again.perplexity == pytest.approx(recorded["perplexity"], rel=0.01)
    # The pulled copy carries manifest.json, the measured one carried conversion.json: a few kB apart.
    assert again.size_bytes == pytest.approx(recorded["size_bytes"], rel=0.01)
    assert recorded["top1_agreement"] >= 0.5

    server = RuntimeProcess(
        Path(f"registry:{name}:{version}"),
        tmp_path,
        {
            "model": {"version": None},
            "registry": {"url": str(registry), "cache_dir": str(tmp_path / "cache")},
        },
        name=name,
    ).start()
    try:
        models = server.client().models.list().data
        assert models[0].model_extra["version"] == version
        reply = server.client().completions.create(
            model=name, prompt="This License", max_tokens=6, temperature=0
        )
        assert reply.choices[0].text
    finally:
        assert server.stop() == 0


def test_a_conversion_under_the_threshold_pushes_nothing(registry: Path) -> None:
    before = Registry.open(str(registry)).versions("demo")
    done = cli(
        "registry",
        "--registry",
        str(registry),
        "convert",
        "demo@stable",
        "--to",
        "int8",
        "--min-agreement",
        "1.01",
    )
    assert done.returncode == 2
    assert "under the threshold" in done.stderr
    assert Registry.open(str(registry)).versions("demo") == before
