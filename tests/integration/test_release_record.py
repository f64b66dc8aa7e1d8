"""The release record (library/release_record.py) run by the real ansible-playbook: the engine and its
parallel sizes are part of a release, so a change of engine alone moves the old release to `previous`
(where a rollback goes), and a record written before they were recorded reads as the auto engine on one
device, not as a change. A change of driver keeps the one before, where a failed driver upgrade goes back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import REPO
from harness.playbooks import playbook

pytestmark = pytest.mark.integration

PLAYBOOK = REPO / "tests/integration/playbooks/release_record.yml"
RELEASE = {"runtime_version": "0.1.0", "model": "demo", "model_version": "v1", "model_path": "/models/v1"}
RECORDED_BEFORE_ENGINES = {**RELEASE, "since": "2026-12-01T00:00:00Z", "run": "first", "state": "serving"}
ON_ONE_DEVICE = {"tensor_parallel_size": 1, "pipeline_parallel_size": 1}


def record(path: Path, run: str, wanted: dict, driver: str = "none") -> int:
    """One call of the module for instance 1; returns how many tasks changed something."""
    extra = {"record_path": str(path), "record_run": run, "record_instances": {"1": wanted}}
    done = playbook(PLAYBOOK, REPO / "inventories/local", {**extra, "record_driver": driver})
    assert done.returncode == 0, done.output[-3000:]
    return done.changed()


def test_an_engine_change_is_a_release_change_that_a_rollback_undoes(tmp_path: Path) -> None:
    path = tmp_path / "model_runtime.fact"
    path.write_text(
        json.dumps({"instances": {"1": RECORDED_BEFORE_ENGINES}, "previous": {}, "driver_version": "none"})
    )

    assert record(path, "same", {**RELEASE, "engine": "auto", **ON_ONE_DEVICE}) == 0
    assert json.loads(path.read_text())["instances"]["1"] == RECORDED_BEFORE_ENGINES

    assert record(path, "to-vllm", {**RELEASE, "engine": "vllm", **ON_ONE_DEVICE}) == 1
    after = json.loads(path.read_text())
    assert after["instances"]["1"]["engine"] == "vllm"
    assert after["instances"]["1"]["run"] == "to-vllm"
    assert after["previous"]["1"] == RECORDED_BEFORE_ENGINES
    assert record(path, "again", {**RELEASE, "engine": "vllm", **ON_ONE_DEVICE}) == 0

    # rollback.yml's target is the previous entry as recorded: back on the auto engine, one device.
    assert record(path, "rollback", after["previous"]["1"]) == 1
    back = json.loads(path.read_text())["instances"]["1"]
    assert back["engine"] == "auto"
    assert back["tensor_parallel_size"] == back["pipeline_parallel_size"] == "1"
    assert record(path, "tp2", {**RELEASE, "engine": "vllm", "tensor_parallel_size": 2}) == 1
    assert json.loads(path.read_text())["instances"]["1"]["tensor_parallel_size"] == "2"


def test_a_driver_change_keeps_the_driver_before(tmp_path: Path) -> None:
    path = tmp_path / "model_runtime.fact"
    release = {**RELEASE, **ON_ONE_DEVICE}
    assert record(path, "first", release, driver="570.133.20") == 1
    assert "previous_driver_version" not in json.loads(path.read_text())
    assert record(path, "driver-upgrade", release, driver="575.51.03") == 1
    after = json.loads(path.read_text())
    assert (after["driver_version"], after["previous_driver_version"]) == ("575.51.03", "570.133.20")
    assert after["previous"] == {}  # the instance's release did not change
    assert record(path, "again", release, driver="575.51.03") == 0
    assert json.loads(path.read_text())["previous_driver_version"] == "570.133.20"
