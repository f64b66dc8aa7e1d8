"""Which engine serves a model folder: onnxruntime for an ONNX export, the ensemble engine for an
ensemble (whose members come back here), torch for everything else."""

from __future__ import annotations

from pathlib import Path

from model_runtime.config import ModelSettings, RegistrySettings
from model_runtime.engine.base import Engine
from model_runtime.engine.loading import detect_format


def load_engine(
    settings: ModelSettings,
    max_batch: int,
    prefill_chunk: int = 4096,
    registry: RegistrySettings | None = None,
) -> Engine:
    """registry resolves an ensemble's members that are registry references."""
    kind = detect_format(Path(settings.path)).kind
    if kind == "ensemble":
        from model_runtime.ensemble.engine import load_ensemble_engine

        return load_ensemble_engine(settings, max_batch, prefill_chunk, registry)
    if kind == "onnx":
        from model_runtime.engine.onnx_engine import load_onnx_engine

        return load_onnx_engine(settings)
    from model_runtime.engine.torch_engine import load_torch_engine

    return load_torch_engine(settings, max_batch, prefill_chunk)
