"""The local fleet's second model: the demo model's int8 copy (`model-runtime demo-model --int8 DIR`,
which `make demo-model` and the demo_model fixture run), made by the converter with its checks, named
demo-int8, and made again only when the demo model's build changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.models import DEMO_INT8_MODEL
from model_runtime.demo import int8
from model_runtime.engine.agreement import MIN_AGREEMENT
from model_runtime.engine.loading import detect_format
from model_runtime.registry.manifest import read_manifest, verify_folder

pytestmark = pytest.mark.integration


def test_the_int8_copy_is_a_checked_conversion_of_the_current_demo_build(demo_model: Path) -> None:
    manifest = read_manifest(DEMO_INT8_MODEL)
    assert manifest["name"] == int8.NAME == "demo-int8"
    assert manifest["source_digest"] == read_manifest(demo_model)["digest"]
    verify_folder(DEMO_INT8_MODEL, manifest)
    assert detect_format(DEMO_INT8_MODEL).kind == "int8"
    record = json.loads((DEMO_INT8_MODEL / "conversion.json").read_text())
    assert record["target"] == "int8"
    assert record["checks"]["top1_agreement"] >= MIN_AGREEMENT
    assert int8.is_current(demo_model, DEMO_INT8_MODEL)


def test_a_copy_of_another_build_is_not_current(demo_model: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(
        json.dumps({**read_manifest(DEMO_INT8_MODEL), "source_digest": "0" * 64})
    )
    assert not int8.is_current(demo_model, other)
    assert not int8.is_current(demo_model, tmp_path / "missing")
