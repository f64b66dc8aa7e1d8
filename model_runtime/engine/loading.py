"""Loading a local Hugging Face model folder safely: no hub, no pickles that run code, clear errors."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from model_runtime.engine.base import ModelLoadError

log = logging.getLogger(__name__)

# Nothing in the runtime may reach a model hub: every load is from local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
hf_logging.disable_progress_bar()  # a progress bar per load is noise in service logs

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class WeightsFormat:
    kind: str  # "safetensors" or "pytorch"
    files: tuple[Path, ...]


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"model.device: {setting} asked for, but torch sees no CUDA device")
    return torch.device(setting)


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on a GPU that supports it, fp16 on an older GPU, fp32 on CPU (CPU half kernels are slow)."""
    if setting != "auto":
        return _DTYPES[setting]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


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


def find_weights(folder: Path) -> WeightsFormat:
    """Safetensors first; a PyTorch pickle only as a fallback (and then only tensors are unpickled)."""
    for kind, single, index in (
        ("safetensors", "model.safetensors", "model.safetensors.index.json"),
        ("pytorch", "pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (folder / index).is_file():
            return WeightsFormat(kind, _indexed_shards(folder / index))
        if (folder / single).is_file():
            return WeightsFormat(kind, (folder / single,))
    raise ModelLoadError(
        f"{folder}: no weights (model.safetensors, pytorch_model.bin or a shard index of either)"
    )


def check_model_folder(folder: Path) -> WeightsFormat:
    """Every problem with a folder, named, before any weight is read."""
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: not a directory")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder}: config.json is missing")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(f"{folder}: no tokenizer ({', '.join(TOKENIZER_FILES)})")
    return find_weights(folder)


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
