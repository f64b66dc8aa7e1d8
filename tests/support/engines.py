"""The engines a test can serve with, and the runtime settings that choose each."""

from __future__ import annotations

import pytest

from harness.vllm_env import vllm_settings

ENGINES = ["builtin", "vllm"]


def engine_settings(engine: str, request: pytest.FixtureRequest) -> dict:
    """Nothing for the builtin engine (the default on a CPU host); for vllm, the session's environment
    of vLLM (the vllm_python fixture, built on first use) and the settings for this machine."""
    return vllm_settings(request.getfixturevalue("vllm_python")) if engine == "vllm" else {}


# The dtype of the tests that compare an engine with a float32 forward pass done by hand: `auto` serves
# bfloat16 on a CPU that computes it natively (AMX, AVX-512 BF16), as some of the machines running the
# suite do, and a bfloat16 answer is not the float32 one to within the tolerances those tests hold.
EXACT = "float32"
