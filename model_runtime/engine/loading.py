"""Reading a model folder safely: which format it is, what is missing, and loading it without a hub
and without unpickling code.

Formats: a Hugging Face folder with safetensors (preferred) or a PyTorch pickle (`pytorch_model.bin`,
read with weights_only), one GGUF file (Llama family; config and tokenizer come from the file), an
ONNX export (`model.onnx` with config.json and the tokenizer), and our own dynamic-int8 folder
(safetensors of int8 weights and scales), and an ensemble (`ensemble.json` with the members' shared
tokenizer). Anything else, or a folder with something missing, is a ModelLoadError naming what is
missing. Which engine loads each format is factory.py's table; the ensemble format's loader is a
plugin's (model_runtime/ensemble/plugin.py), so this module only recognises its folder.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from model_runtime.engine.base import ModelLoadError
from model_runtime.engine.cpu import computes_bf16

log = logging.getLogger(__name__)

# Nothing in the runtime may reach a model hub: every load is from local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
hf_logging.disable_progress_bar()  # a progress bar per load is noise in service logs

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
INT8_MARKER = "model_runtime_int8.json"
ONNX_FILE = "model.onnx"
ENSEMBLE_FILE = "ensemble.json"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelFormat:
    kind: str  # "safetensors", "pytorch", "gguf", "onnx", "int8", "ensemble"
    folder: Path
    weights: tuple[Path, ...]

    @property
    def gguf_file(self) -> str | None:
        return self.weights[0].name if self.kind == "gguf" else None


def _indexed_shards(index_file: Path) -> tuple[Path, ...]:
    try:
        weight_map = json.loads(index_file.read_text())["weight_map"]
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{index_file.name}: not a valid shard index ({exc})") from exc
    shards = tuple(sorted({index_file.parent / name for name in weight_map.values()}))
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise ModelLoadError(f"{index_file.name} names shards that are missing: {', '.join(missing)}")
    return shards


def _require(folder: Path, what: str, *names: str) -> None:
    if not any((folder / name).is_file() for name in names):
        raise ModelLoadError(f"{folder}: {what} is missing ({' or '.join(names)})")


def detect_format(folder: Path) -> ModelFormat:
    """The folder's format, after checking that everything that format needs is there."""
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: not a directory")
    if (folder / ENSEMBLE_FILE).is_file():
        _require(folder, "the members' shared tokenizer", *TOKENIZER_FILES)
        return ModelFormat("ensemble", folder, ())
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) > 1:
        raise ModelLoadError(f"{folder}: several GGUF files ({', '.join(p.name for p in ggufs)}); keep one")
    if ggufs:
        return ModelFormat("gguf", folder, (ggufs[0],))
    candidates = (
        ("int8", INT8_MARKER, None),
        ("onnx", ONNX_FILE, None),
        ("safetensors", "model.safetensors", "model.safetensors.index.json"),
        ("pytorch", "pytorch_model.bin", "pytorch_model.bin.index.json"),
    )
    for kind, single, index in candidates:
        if index and (folder / index).is_file():
            weights = _indexed_shards(folder / index)
        elif (folder / single).is_file():
            weights = (folder / single,)
        else:
            continue
        _require(folder, "config.json", "config.json")
        _require(folder, "the tokenizer", *TOKENIZER_FILES)
        if kind == "int8":
            _require(folder, "the int8 weights", "model.safetensors")
        return ModelFormat(kind, folder, weights)
    raise ModelLoadError(
        f"{folder}: no model weights (model.safetensors, pytorch_model.bin, a shard index of either, "
        f"{ONNX_FILE} or a .gguf file)"
    )


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"model.device: {setting} asked for, but torch sees no CUDA device")
    return torch.device(setting)


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on a GPU that supports it, fp16 on an older GPU; on a CPU, bf16 where it computes bf16
    natively (AMX, AVX-512 BF16), fp32 elsewhere (emulated half kernels are slower than fp32's)."""
    if setting != "auto":
        return _DTYPES[setting]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if computes_bf16() else torch.float32


def load_tokenizer(fmt: ModelFormat, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(
            fmt.folder, gguf_file=fmt.gguf_file, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{fmt.folder}: the tokenizer cannot be loaded: {exc}") from exc


def load_config(fmt: ModelFormat, trust_remote_code: bool = False) -> Any:
    try:
        return AutoConfig.from_pretrained(
            fmt.folder, gguf_file=fmt.gguf_file, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{fmt.folder}: config cannot be loaded: {exc}") from exc


def context_length(config: object, cap: int | None) -> int:
    """The longest sequence the engine accepts: the model's positions, its sliding window (we run full
    attention over the cache, so a window shorter than the positions bounds what stays exact), the cap."""
    limits = [
        value
        for name in ("max_position_embeddings", "n_positions", "max_seq_len", "sliding_window")
        if isinstance(value := getattr(config, name, None), int) and value > 0
    ]
    if cap:
        limits.append(cap)
    if not limits:
        raise ModelLoadError(
            "config.json: no max_position_embeddings (or n_positions); set model.max_context"
        )
    return min(limits)


def eos_token_ids(fmt: ModelFormat, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    ids: set[int] = set()
    try:
        generation = GenerationConfig.from_pretrained(fmt.folder, local_files_only=True)
        eos = generation.eos_token_id
        ids.update([eos] if isinstance(eos, int) else list(eos or []))
    except OSError:
        pass  # generation_config.json is optional
    if isinstance(tokenizer.eos_token_id, int):
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)
