"""The engines a test can serve with, and the runtime settings that choose each."""

from __future__ import annotations

import pytest

from harness.vllm_env import vllm_settings

ENGINES = ["builtin", "vllm"]


def engine_settings(engine: str, request: pytest.FixtureRequest) -> dict:
    """Nothing for the builtin engine (the default on a CPU host); for vllm, the session's environment
    of vLLM (the vllm_python fixture, built on first use) and the settings for this machine."""
    return vllm_settings(request.getfixturevalue("vllm_python")) if engine == "vllm" else {}
