"""`model-runtime doctor --config` against a real server process: ready is 0 (or 1: a warning such as a
missing GPU driver is not a failure); the same host with the server stopped is 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.server import RuntimeProcess

pytestmark = pytest.mark.e2e


def doctor(config: Path) -> tuple[int, dict]:
    done = subprocess.run(
        [sys.executable, "-m", "model_runtime", "doctor", "--config", str(config), "--min-free-gb", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, json.loads(done.stdout)


def by_name(report: dict) -> dict[str, dict]:
    return {check["name"]: check for check in report["checks"]}


def test_doctor_reads_a_ready_instance_then_a_stopped_one(demo_model: Path, tmp_path: Path) -> None:
    server = RuntimeProcess(demo_model, tmp_path, name="demo").start()
    try:
        code, report = doctor(server.config_file)
        checks = by_name(report)
        assert code in (0, 1), report
        assert report["status"] == {0: "ok", 1: "warn"}[code]
        assert checks["instance_ready"]["status"] == "ok"
        assert "demo@test" in checks["instance_ready"]["detail"]
        assert checks["model_manifest"]["status"] == "ok"  # the demo model carries its manifest
        assert checks["runtime_version"]["status"] in ("ok", "warn")
        assert server.base_url in checks["runtime_version"]["detail"]
    finally:
        assert server.stop() == 0
    code, report = doctor(server.config_file)
    assert code == 2, report
    assert report["status"] == "fail"
    assert by_name(report)["instance_ready"]["status"] == "fail"
