"""Which engine serves a model: `model.engine` (builtin, vllm or auto) against the folder and the host."""

from __future__ import annotations

from typing import Literal

import torch

from model_runtime.config import ModelSettings, VllmSettings
from model_runtime.engine.base import ModelLoadError
from model_runtime.engine.loading import ModelFormat

# The folders vLLM reads as they are (a Hugging Face folder); our int8, ONNX, GGUF and ensemble formats
# are the builtin engines'.
VLLM_FORMATS = frozenset({"safetensors", "pytorch"})


def choose_engine(model: ModelSettings, vllm: VllmSettings, fmt: ModelFormat) -> Literal["builtin", "vllm"]:
    """auto: vLLM on a CUDA host where its environment is set and it reads the format; builtin otherwise.
    Raises ModelLoadError for a choice that cannot serve this folder here."""
    engine = model.engine
    if engine == "auto":
        engine = (
            "vllm" if vllm.python is not None and fmt.kind in VLLM_FORMATS and on_gpu(model) else "builtin"
        )
    if engine == "vllm" and not (vllm.python and vllm.python.is_file()):
        raise ModelLoadError(
            f"vllm.python: {vllm.python} is not a file (vLLM's environment is not installed)"
        )
    if engine == "vllm" and fmt.kind not in VLLM_FORMATS:
        raise ModelLoadError(
            f"model.engine: vllm serves safetensors and PyTorch folders; {fmt.folder} is {fmt.kind} "
            "(engine: builtin serves it)"
        )
    if engine == "builtin" and model.gpus > 1:
        raise ModelLoadError(
            f"model.tensor_parallel_size x pipeline_parallel_size is {model.gpus}, which only the vllm "
            "engine can split a model across; this host has no vLLM for it (vllm.python, a CUDA device)"
        )
    return engine


def on_gpu(model: ModelSettings) -> bool:
    return model.device != "cpu" and torch.cuda.is_available()


def two_copies_fit(engine: str, model: ModelSettings, vllm: VllmSettings) -> bool:
    """Whether a second copy of the model can load beside the first (a hot swap beside): not when vLLM
    takes more than half of a GPU's memory for one."""
    return not (engine == "vllm" and on_gpu(model) and vllm.one_copy_per_gpu)
