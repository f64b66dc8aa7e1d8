"""Each input format loads and serves the same model, or fails naming what is missing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from model_runtime.config import ModelSettings
from model_runtime.convert.convert import convert
from model_runtime.corpus import load_corpus
from model_runtime.engine.base import ModelLoadError
from model_runtime.engine.factory import load_engine
from model_runtime.engine.loading import detect_format
from tests.support.engines import EXACT

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def formats(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("formats")
    pickle = root / "pytorch"
    pickle.mkdir()
    model = AutoModelForCausalLM.from_pretrained(demo_model)
    torch.save(model.state_dict(), pickle / "pytorch_model.bin")  # the old checkpoint format, by hand
    for name in (
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
    ):
        shutil.copy(demo_model / name, pickle / name)
    texts = load_corpus().held_out
    made = {"safetensors": demo_model, "pytorch": pickle}
    for target in ("gguf", "onnx", "int8"):
        made[target] = root / target
        convert(demo_model, target, made[target], texts, min_agreement=0.5, name="demo")
    return made


@pytest.mark.parametrize("kind", ["safetensors", "pytorch", "gguf", "onnx", "int8"])
def test_each_format_loads_and_generates(formats: dict[str, Path], kind: str) -> None:
    folder = formats[kind]
    assert detect_format(folder).kind == kind
    engine = load_engine(ModelSettings(path=str(folder), dtype=EXACT), max_batch=2)
    prompt = engine.tokenizer("This License")["input_ids"]
    logits = engine.step([], [], [0], [prompt])
    assert logits.shape == (1, len(engine.tokenizer))
    assert torch.isfinite(logits).all()
    reference = load_engine(ModelSettings(path=str(formats["safetensors"]), dtype=EXACT), max_batch=2).step(
        [], [], [0], [prompt]
    )
    tolerance = {"int8": 2.0}.get(kind, 1e-3)  # int8 approximates; the others are the same weights
    assert (logits - reference).abs().max().item() < tolerance
    assert engine.info.max_context == 512


def test_pytorch_pickle_is_read_with_weights_only(
    formats: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bool] = []
    original = torch.load
    monkeypatch.setattr(
        torch, "load", lambda *a, **k: (calls.append(k.get("weights_only")), original(*a, **k))[1]
    )
    load_engine(ModelSettings(path=str(formats["pytorch"])), max_batch=1)
    assert calls
    assert all(calls)


def copy_without(source: Path, target: Path, *missing: str) -> Path:
    shutil.copytree(source, target)
    for name in missing:
        (target / name).unlink()
    return target


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        (("config.json",), "config.json is missing"),
        (("tokenizer.json",), "the tokenizer is missing"),
        (("model.safetensors",), "no model weights"),
    ],
)
def test_incomplete_folder_names_what_is_missing(
    demo_model: Path, tmp_path: Path, missing: tuple, named: str
) -> None:
    folder = copy_without(demo_model, tmp_path / "broken", *missing)
    with pytest.raises(ModelLoadError, match=named):
        detect_format(folder)


def test_shard_index_naming_a_missing_shard(demo_model: Path, tmp_path: Path) -> None:
    folder = copy_without(demo_model, tmp_path / "sharded", "model.safetensors")
    index = {
        "metadata": {},
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copy(demo_model / "model.safetensors", folder / "model-00001-of-00002.safetensors")
    with pytest.raises(ModelLoadError, match=r"shards that are missing: model-00002-of-00002\.safetensors"):
        detect_format(folder)


def test_unknown_and_ambiguous_folders(tmp_path: Path, formats: dict[str, Path]) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError, match="no model weights"):
        detect_format(tmp_path)
    with pytest.raises(ModelLoadError, match="not a directory"):
        detect_format(tmp_path / "missing")
    double = tmp_path / "double"
    double.mkdir()
    for name in ("a.gguf", "b.gguf"):
        shutil.copy(next(formats["gguf"].glob("*.gguf")), double / name)
    with pytest.raises(ModelLoadError, match="several GGUF files"):
        detect_format(double)
