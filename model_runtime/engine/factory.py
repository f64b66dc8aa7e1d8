"""Which engine serves a model folder: onnxruntime for an ONNX export, torch for everything else."""

from __future__ import annotations

from pathlib import Path

from model_runtime.config import ModelSettings
from model_runtime.engine.base import Engine
from model_runtime.engine.loading import detect_format


def load_engine(settings: ModelSettings, max_batch: int, prefill_chunk: int = 4096) -> Engine:
    if detect_format(Path(settings.path)).kind == "onnx":
        from model_runtime.engine.onnx_engine import load_onnx_engine

        return load_onnx_engine(settings)
    from model_runtime.engine.torch_engine import load_torch_engine

    return load_torch_engine(settings, max_batch, prefill_chunk)
