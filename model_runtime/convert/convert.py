"""`model-runtime convert SRC --to TARGET OUT`: a format or precision change whose checks are recorded.

Targets: safetensors (from a PyTorch pickle, say), bf16 and fp16, int8 (dynamic, for CPU serving),
onnx (served by the onnxruntime engine) and gguf (Llama family). The result is built in a staging
folder beside OUT, measured against the source (convert/checks.py), and renamed to OUT only if the
top-1 agreement reaches the threshold; `conversion.json` in it records the source, target and checks.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from model_runtime.config import ModelSettings
from model_runtime.convert import TARGETS
from model_runtime.convert.checks import Checks, measure
from model_runtime.engine import int8
from model_runtime.engine.agreement import MIN_AGREEMENT
from model_runtime.engine.loading import detect_format, load_tokenizer
from model_runtime.engine.torch_engine import load_causal_lm
from model_runtime.errors import OperatorError

RECORD = "conversion.json"
_PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}


class ConversionRefused(OperatorError, RuntimeError):
    def __init__(self, checks: Checks, threshold: float) -> None:
        super().__init__(
            f"top-1 agreement {checks.top1_agreement:.3f} is under the threshold {threshold:.3f} "
            f"(max |logit difference| {checks.max_abs_logit_diff:.4g}); nothing was written"
        )
        self.checks = checks


def _write_target(source: Path, target: str, out: Path, name: str) -> ModelSettings:
    """Build the converted model in out; return the settings that load it for the checks."""
    fmt = detect_format(source)
    tokenizer = load_tokenizer(fmt)
    model = load_causal_lm(fmt, torch.float32, torch.device("cpu"))
    settings = ModelSettings(path=str(out), device="cpu")
    if target == "gguf":
        from model_runtime.convert.gguf_export import export_gguf  # needs the `formats` extra's gguf

        export_gguf(model, tokenizer, out / f"{name}.gguf", name)
        return settings
    tokenizer.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    if target == "int8":
        int8.save(model, int8.quantize(model), out)
    elif target == "onnx":
        from model_runtime.convert.onnx_export import export_onnx  # needs the `formats` extra's onnx

        model.set_attn_implementation("sdpa")  # the exported graph uses standard attention
        model.config.save_pretrained(out)
        export_onnx(model, out)
    elif target in _PRECISIONS:
        model.to(_PRECISIONS[target]).save_pretrained(  # type: ignore[arg-type]  # as torch_engine's
            out, safe_serialization=True
        )
        settings = ModelSettings(
            path=str(out), device="cpu", dtype="bfloat16" if target == "bf16" else "float16"
        )
    else:
        model.save_pretrained(out, safe_serialization=True)
    return settings


def convert(
    source: Path,
    target: str,
    out: Path,
    eval_texts: Sequence[str],
    min_agreement: float = MIN_AGREEMENT,
    name: str = "model",
) -> dict:
    """Convert, check, and keep the result only if it agrees enough with the source; return the record."""
    if target not in TARGETS:
        raise ValueError(f"--to must be one of {', '.join(TARGETS)}")
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        started = time.perf_counter()
        target_settings = _write_target(source, target, staging, name)
        seconds = time.perf_counter() - started
        checks = measure(ModelSettings(path=str(source), device="cpu"), target_settings, eval_texts)
        if checks.top1_agreement < min_agreement:
            raise ConversionRefused(checks, min_agreement)
        record = {
            "source": str(source),
            "source_format": detect_format(source).kind,
            "target": target,
            "seconds": round(seconds, 2),
            "min_agreement": min_agreement,
            "checks": checks.as_dict(),
        }
        (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        staging.chmod(0o755)
        staging.rename(out)
        return record
    finally:
        shutil.rmtree(staging, ignore_errors=True)
