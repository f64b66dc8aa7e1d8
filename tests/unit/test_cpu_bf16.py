"""dtype auto on a CPU that computes bfloat16 natively (AMX, AVX-512 BF16): bfloat16, checked as a
conversion is. This machine's CPU has neither, so the probe of /proc/cpuinfo is what the tests set; the
model, the cast and the check are real."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from model_runtime.config import ModelSettings
from model_runtime.engine import loading, torch_engine
from model_runtime.engine.cpu import computes_bf16, cpu_flags
from model_runtime.engine.loading import resolve_dtype

pytestmark = pytest.mark.unit

SAPPHIRE_RAPIDS = (
    "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n\nprocessor\t: 1\n"
)
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"


def test_the_flags_of_the_first_processor_are_read() -> None:
    assert {"avx512_bf16", "amx_bf16"} <= cpu_flags(SAPPHIRE_RAPIDS)
    assert cpu_flags("processor\t: 0\n") == frozenset()


@pytest.mark.parametrize(("cpuinfo", "native"), [(SAPPHIRE_RAPIDS, True), (SKYLAKE, False)])
def test_bf16_is_native_only_with_amx_or_avx512_bf16(tmp_path: Path, cpuinfo: str, native: bool) -> None:
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    assert computes_bf16(tmp_path / "cpuinfo") is native
    assert computes_bf16(tmp_path / "absent") is False  # not Linux: nothing is assumed


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_a_cpu_follows_what_it_computes(
    monkeypatch: pytest.MonkeyPatch, native: bool, expected: torch.dtype
) -> None:
    monkeypatch.setattr(loading, "computes_bf16", lambda: native)
    assert resolve_dtype("auto", torch.device("cpu")) == expected
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32  # an explicit choice stands


def loaded_record(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    return next(r for r in caplog.records if r.getMessage() == "loaded model")


def test_auto_serves_bf16_after_the_check_and_records_it(
    demo_model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(loading, "computes_bf16", lambda: True)
    with caplog.at_level(logging.INFO, logger=torch_engine.__name__):
        engine = torch_engine.load_torch_engine(ModelSettings(path=str(demo_model)), max_batch=2)
    check = loaded_record(caplog).dtype_check
    assert engine.info.dtype == "bfloat16"
    assert engine.model.dtype == torch.bfloat16
    assert check["kept"]
    assert check["top1_agreement"] >= check["min_agreement"] == 0.9
    assert check["from"] == "float32"
    assert check["to"] == "bfloat16"
    assert check["max_abs_logit_diff"] > 0
    engine.close()


def test_auto_keeps_float32_when_bf16_would_disagree(
    demo_model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(loading, "computes_bf16", lambda: True)
    monkeypatch.setattr(torch_engine, "MIN_AGREEMENT", 1.01)  # no cast can reach it
    with caplog.at_level(logging.INFO, logger=torch_engine.__name__):
        engine = torch_engine.load_torch_engine(ModelSettings(path=str(demo_model)), max_batch=2)
    assert loaded_record(caplog).dtype_check["kept"] is False
    assert engine.info.dtype == "float32"
    assert engine.model.dtype == torch.float32
    prompt = engine.tokenizer("This License")["input_ids"]
    assert torch.isfinite(engine.step([], [], [0], [prompt])).all()  # the reloaded model serves
    engine.close()
