"""The demo model's int8 copy, `demo-int8`: the second model of the local fleet demo (a fleet that serves
two models behind one endpoint). Made by the converter, with its agreement check, from the demo model's
current build, and remade when that build changes."""

from __future__ import annotations

import shutil
from pathlib import Path

from model_runtime.registry.manifest import build_manifest, read_manifest, write_manifest

NAME = "demo-int8"


def is_current(demo: Path, out: Path) -> bool:
    """Whether out holds the int8 copy of demo's current build (its manifest names that build)."""
    try:
        return read_manifest(out).get("source_digest") == read_manifest(demo)["digest"]
    except (OSError, ValueError, KeyError):
        return False


def build_int8_copy(demo: Path, out: Path) -> dict:
    """Convert demo to int8 into out (replacing what is there), with a manifest naming it demo-int8 and
    the demo build it was made from; returns the conversion's record."""
    from model_runtime.convert.cli import evaluation_texts  # torch, as the converter's
    from model_runtime.convert.convert import convert

    source = read_manifest(demo)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    record = convert(demo, "int8", staging, evaluation_texts(None), name=NAME)
    write_manifest(staging, build_manifest(staging, NAME, source_digest=source["digest"]))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return record
