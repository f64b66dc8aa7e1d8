"""The environment another venv's interpreter (vLLM's) gets from this process: ours without our import
path and venv, which would put this package's dependencies (another transformers, another torch) ahead
of its own. Used for the vLLM process, for asking vLLM's environment what it holds, and for building it."""

from __future__ import annotations

from collections.abc import Mapping

OURS = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")


def foreign_environment(base: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in base.items() if k not in OURS}
