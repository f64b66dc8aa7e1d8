"""The autoscaler's configuration file: a mistake names its key, before the service starts (the
control_node role runs the same check before it installs the file)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fleet_ops.autoscale.service import Config, ConfigError, main
from fleet_ops.autoscale.signals import queries

GOOD = {
    "prometheus": "http://127.0.0.1:9090",
    "runner": "/var/lib/model-runtime/schedules/fleet-run",
    "policy": {"min_replicas": 1, "max_replicas": 4, "capacity_per_replica": 16},
}


def test_a_good_file_loads_with_the_policy_and_defaults() -> None:
    config = Config.from_dict({**GOOD, "playbook_args": ["-e", "@vars.yml"]})
    assert config.policy.capacity_per_replica == 16
    assert config.playbook_args == ("-e", "@vars.yml")
    assert (config.interval_s, config.window_s, config.dry_run, config.model) == (15.0, 60, False, "")


def test_in_a_fleet_of_several_models_it_reads_and_scales_one() -> None:
    assert Config.from_dict({**GOOD, "model": "demo-int8"}).model == "demo-int8"
    every, one = queries(60), queries(60, None, "demo-int8")
    assert every["replicas"] == 'count(up{job="model-runtime"})'
    # Each reading keeps the series of the instances that loaded that model (one model an instance).
    only = 'and on(instance) model_runtime_model_load_seconds{job="model-runtime", model="demo-int8"}'
    assert all(only in one[name] and only not in every[name] for name in every)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({**GOOD, "intervall_s": 5}, "unknown key 'intervall_s'"),
        ({k: v for k, v in GOOD.items() if k != "runner"}, "runner is required"),
        ({**GOOD, "policy": {**GOOD["policy"], "max_replica": 3}}, "unknown key 'policy.max_replica'"),
        ({**GOOD, "policy": {**GOOD["policy"], "min_replicas": 5}}, "min_replicas and max_replicas"),
        ({**GOOD, "policy": {"min_replicas": 1, "max_replicas": 2}}, "capacity_per_replica"),
        ({**GOOD, "policy": [1, 2]}, "policy must be a mapping"),
    ],
)
def test_a_mistake_names_its_key(raw: dict, says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace(".", r"\.")):
        Config.from_dict(raw)


def test_check_exits_2_with_the_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "autoscaler.yml"
    path.write_text("prometheus: http://127.0.0.1:9090\nrunner: /x\npolicy: {min_replicas: 1}\n")
    assert main(str(path), check=True) == 2
    assert "capacity_per_replica" in capsys.readouterr().err


def burst(tmp_path: Path, outputs: object = None, **more: object) -> dict:
    """A burst section whose stack outputs file holds `outputs` (the stack's, by default)."""
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps({"autoscalingGroupName": "gpu-asg"} if outputs is None else outputs))
    return {"stack_outputs": str(path), "policy": {"capacity_per_instance": 16}, **more}


def test_a_burst_section_names_the_group_from_the_stack_outputs(tmp_path: Path) -> None:
    config = Config.from_dict({**GOOD, "burst": burst(tmp_path, region="eu-west-1")})
    assert config.burst is not None
    assert (config.burst.group, config.burst.region, config.burst.backend) == (
        "gpu-asg",
        "eu-west-1",
        "burst",
    )
    assert config.burst.policy.capacity_per_instance == 16


@pytest.mark.parametrize(
    ("section", "says"),
    [
        ({"policy": {"capacity_per_instance": 16}}, "burst.stack_outputs is required"),
        (
            {"stack_outputs": "/nonexistent.json", "policy": {"capacity_per_instance": 16}},
            "burst.stack_outputs",
        ),
        ({"regoin": "x"}, "unknown key 'burst.regoin'"),
        ({"policy": {"capacity_per_instance": 0}}, "burst.policy: capacity_per_instance"),
        (
            {"policy": {"capacity_per_instance": 4, "cooldown_in": 3}},
            "unknown key 'burst.policy.cooldown_in'",
        ),
    ],
)
def test_a_burst_mistake_names_its_key(tmp_path: Path, section: dict, says: str) -> None:
    raw = {**burst(tmp_path), **section}
    if "stack_outputs" not in section and "is required" in says:
        raw.pop("stack_outputs")
    with pytest.raises(ConfigError, match=re.escape(says)):
        Config.from_dict({**GOOD, "burst": raw})


def test_stack_outputs_without_the_group_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no autoscalingGroupName"):
        Config.from_dict({**GOOD, "burst": burst(tmp_path, outputs={"endpointUrl": "https://x"})})
