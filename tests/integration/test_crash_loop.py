"""A model that cannot load ends in a failed state instead of being restarted forever: deploy.yml puts
a release whose weights are broken on this machine (the local inventory, its instance under the real
supervisord the role installs), and supervisord makes exactly model_runtime_start_retries + 1
attempts, each counted by the runtime itself in its state folder (the count behind
model_runtime_process_starts_total), then gives up: FATAL. The run fails saying so, without printing
the API key even at -vvv."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness import REPO
from harness.fleet import model_copy
from harness.playbooks import ensure_wheelhouse, playbook, role_defaults
from harness.server import free_port

pytestmark = pytest.mark.integration

LOCAL = REPO / "inventories" / "local"
KEY = "crash-loop-test-key-5f1c"
# One retry: two starts tell "retried, then gave up" from both "never retried" and "restarted forever".
RETRIES = 1
INSTANCE = f"{role_defaults('model_runtime')['model_runtime_service_name']}-1"  # supervisord's program


def test_a_model_that_cannot_load_ends_fatal_after_its_retries(demo_model: Path, tmp_path: Path) -> None:
    ensure_wheelhouse()  # the local inventory installs from it
    prefix = tmp_path / "fs"
    settings = {
        "fleet_prefix": str(prefix),
        "model_artifacts_source": str(
            model_copy(demo_model, tmp_path / "broken", "broken", break_weights=True)
        ),
        "model_runtime_instances": 1,
        "model_runtime_base_port": free_port(),
        "model_runtime_metrics_base_port": free_port(),
        "loadbalancer_port": free_port(),
        "loadbalancer_stats_port": free_port(),
        "model_runtime_api_keys": [KEY],
        "model_runtime_start_retries": RETRIES,
    }
    try:
        run = playbook("deploy.yml", LOCAL, settings, "-vvv")
        status = subprocess.run(
            [prefix / "opt/model-runtime/supervisor/bin/supervisorctl",
             "-c", prefix / "etc/model-runtime/supervisor/supervisord.conf", "status", INSTANCE],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        starts = (prefix / "var/lib/model-runtime/instance-1/process-starts").read_text()
    finally:
        playbook("stop.yml", LOCAL, {"fleet_prefix": str(prefix)})
    assert run.returncode != 0
    assert "the instance stopped for good" in run.output, run.output[-3000:]
    assert "FATAL" in status, status
    assert starts == f"{RETRIES + 1}\n"  # FATAL is final: supervisord starts it no more
    assert KEY not in run.output
