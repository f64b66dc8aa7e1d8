"""Which engine serves a model folder: a table of loaders keyed by the folder's format
(loading.detect_format).

ENGINE_LOADERS holds this package's own formats: onnxruntime for an ONNX export, torch for the others.
A plugin serves more formats by adding its loaders to a copy of the table (the ensemble package does,
for its `ensemble` format). A loader of a model made of other models (an ensemble's members) loads
them through the LoadContext it is handed, with the same table, so it never calls back into this
module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from model_runtime.config import ModelSettings, RegistrySettings
from model_runtime.engine.base import Engine, ModelLoadError
from model_runtime.engine.loading import detect_format
from model_runtime.engine.onnx_engine import load_onnx_engine
from model_runtime.engine.torch_engine import load_torch_engine


class EngineLoader(Protocol):
    def __call__(self, settings: ModelSettings, context: LoadContext) -> Engine:
        """The engine for the model folder at settings.path, whose format is this loader's."""
        ...


@dataclass(frozen=True)
class LoadContext:
    """What every load of one engine process shares: the loaders and the engine's limits."""

    loaders: Mapping[str, EngineLoader]
    max_batch: int
    prefill_chunk: int = 4096
    registry: RegistrySettings | None = None  # resolves the registry references a folder names

    def load(self, settings: ModelSettings) -> Engine:
        kind = detect_format(Path(settings.path)).kind
        loader = self.loaders.get(kind)
        if loader is None:
            raise ModelLoadError(f"{settings.path}: no engine for the {kind} format is installed here")
        return loader(settings, self)


def _onnx(settings: ModelSettings, context: LoadContext) -> Engine:
    return load_onnx_engine(settings)


def _torch(settings: ModelSettings, context: LoadContext) -> Engine:
    return load_torch_engine(settings, context.max_batch, context.prefill_chunk)


ENGINE_LOADERS: Mapping[str, EngineLoader] = {
    "onnx": _onnx,
    **dict.fromkeys(("safetensors", "pytorch", "gguf", "int8"), _torch),
}


def load_engine(
    settings: ModelSettings,
    max_batch: int,
    prefill_chunk: int = 4096,
    registry: RegistrySettings | None = None,
    loaders: Mapping[str, EngineLoader] = ENGINE_LOADERS,
) -> Engine:
    return LoadContext(loaders, max_batch, prefill_chunk, registry).load(settings)
