"""No secret in Ansible's output, at any verbosity, failed or not: the roles' tasks that handle an API
key, a header with a token or a TLS key run down their failing paths (a smoke test that fails against
a real instance, a readiness wait that times out, a manifest read and a download that an HTTP source
refuses) with -vvv and --diff, and the whole output is searched for every secret, as written and
base64-encoded."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pytest

from harness import REPO
from harness.playbooks import playbook
from harness.server import API_KEY, RuntimeProcess, free_port

pytestmark = pytest.mark.integration

PLAYBOOK = REPO / "tests" / "integration" / "playbooks" / "secret_paths.yml"


def encodings(secret: str) -> set[str]:
    return {secret, base64.b64encode(secret.encode()).decode()}


def test_no_secret_in_the_output_of_failing_runs(demo_server: RuntimeProcess, tmp_path: Path) -> None:
    token = f"artifacts-token-{secrets.token_hex(8)}"
    run = playbook(
        PLAYBOOK,
        REPO / "inventories" / "local",
        {
            "instance_port": demo_server.port,
            "dead_port": free_port(),
            "work": str(tmp_path),
            "model_runtime_api_keys": [API_KEY],
            "artifacts_token": token,
        },
        "-vvv",
        "--diff",
    )
    assert run.returncode == 0, run.output[-3000:]
    tls_key = (tmp_path / "tls" / "runtime.key").read_text()
    key_lines = {line for line in tls_key.splitlines() if len(line) >= 40 and not line.startswith("-----")}
    found = {
        secret[:24]
        for secret in encodings(API_KEY) | encodings(token) | encodings(tls_key) | key_lines
        if secret in run.output
    }
    assert found == set()
    # Each path failed, and says why without the secret.
    assert "failed paths: smoke,ready,manifest,download" in run.output
    for reason in (
        "smoke prompt",
        "not ready after 1s",
        f"reading http://127.0.0.1:{demo_server.port}/models/demo/manifest.json failed: HTTP 404",
        "was refused and not installed (the previous version stays in use): weights.safetensors: ",
    ):
        assert reason in run.output
