"""`python -m fleet_ops cloud scale` and `cloud schedules` against moto's server on loopback: a launch
template and an auto scaling group made there, the scheduled actions the program generates for the dev
stack put on it, then the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from fleet_ops.autoscale.actuator import LOCK_HELD, CloudBurst, Runner
from fleet_ops.cloud_scale import CloudError, autoscaling_client, describe_group, scale
from tests.support.pulumi_mocks import run_program
from tests.support.s3 import s3_server

# pulumi_aws warns, as it loads, about resource types this program does not use.
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws")]

GROUP = "gpu-asg"


@pytest.fixture(scope="module")
def group():
    """The dev stack's group and scheduled actions, as `pulumi up` would leave them (in moto)."""
    with s3_server():
        program = run_program("dev")
        spec = program.one("aws:autoscaling/group:Group").inputs
        ec2 = boto3.client("ec2")
        template = ec2.create_launch_template(
            LaunchTemplateName="gpu-lt",
            LaunchTemplateData={
                "ImageId": "ami-12c6146b",
                "InstanceType": "g6.xlarge",
                "MetadataOptions": {"HttpTokens": "required"},
            },
        )["LaunchTemplate"]
        autoscaling = boto3.client("autoscaling")
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=GROUP,
            LaunchTemplate={"LaunchTemplateId": template["LaunchTemplateId"], "Version": "1"},
            MinSize=int(spec["minSize"]),
            MaxSize=int(spec["maxSize"]),
            DesiredCapacity=int(spec["desiredCapacity"]),
            AvailabilityZones=["us-east-1a", "us-east-1b"],
        )
        for action in program.of_type("aws:autoscaling/schedule:Schedule"):
            inputs = action.inputs
            autoscaling.put_scheduled_update_group_action(
                AutoScalingGroupName=GROUP,
                ScheduledActionName=inputs["scheduledActionName"],
                Recurrence=inputs["recurrence"],
                DesiredCapacity=int(inputs["desiredCapacity"]),
                TimeZone=inputs["timeZone"],
            )
        yield {
            "spec": spec,
            "actions": [a.inputs for a in program.of_type("aws:autoscaling/schedule:Schedule")],
        }


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fleet_ops", "cloud", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=dict(os.environ),
    )


def test_scale_sets_the_desired_capacity_within_the_bounds(group: dict) -> None:
    done = cli("scale", "--group", GROUP, "--replicas", "2", "--region", "us-east-1")
    assert done.returncode == 0, done.stderr
    assert f"{GROUP}: desired capacity 1 -> 2 (bounds 1..2" in done.stdout
    assert describe_group(GROUP).desired == 2
    done = cli("scale", "--group", GROUP, "--replicas", "1")
    assert done.returncode == 0, done.stderr
    assert describe_group(GROUP).desired == 1


@pytest.mark.parametrize(
    ("replicas", "says"), [(3, "above the group's maximum size 2"), (0, "below the group's minimum size 1")]
)
def test_scale_refuses_a_number_outside_the_bounds_naming_the_bound(
    group: dict, replicas: int, says: str
) -> None:
    before = describe_group(GROUP).desired
    done = cli("scale", "--group", GROUP, "--replicas", str(replicas))
    assert done.returncode == 2
    assert says in done.stderr
    assert f"replicas={replicas} refused" in done.stderr
    assert "Traceback" not in done.stderr
    assert describe_group(GROUP).desired == before  # nothing changed


def test_an_unknown_group_is_named(group: dict) -> None:
    done = cli("scale", "--group", "no-such-group", "--replicas", "1")
    assert done.returncode == 2
    assert "no-such-group: no such auto scaling group" in done.stderr
    with pytest.raises(CloudError, match="no such auto scaling group"):
        scale("no-such-group", 1)


def test_schedules_lists_the_actions_made_from_the_schedule_file(group: dict) -> None:
    done = cli("schedules", "--group", GROUP, "--json")
    assert done.returncode == 0, done.stderr
    listed = {a["name"]: a for a in json.loads(done.stdout)}
    assert (
        set(listed)
        == {a["scheduledActionName"] for a in group["actions"]}
        == {"weekday-mornings", "evenings"}
    )
    for action in group["actions"]:
        entry = listed[action["scheduledActionName"]]
        assert (entry["recurrence"], entry["desired"]) == (action["recurrence"], action["desiredCapacity"])
    table = cli("schedules", "--group", GROUP)
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "recurrence", "desired"]
    assert any(line.startswith("weekday-mornings") and "0 8 * * 1-5" in line for line in lines)


def test_the_burst_actuator_opens_the_path_before_a_raise_and_drains_it_before_a_lowering(
    group: dict, tmp_path: Path
) -> None:
    """CloudBurst against the group in moto, with a runner that records its runs and exits as told: a
    run that finds the fleet's lock taken (75) leaves the group as it was, either way."""
    calls, status = tmp_path / "calls", tmp_path / "status"
    runner = tmp_path / "fleet-run"
    runner.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexit "$(cat {status})"\n')
    runner.chmod(0o755)
    burst = CloudBurst(Runner(str(runner)), GROUP, autoscaling_client("us-east-1"))
    ready, drain = "autoscale burst.yml -e burst_state=ready", "autoscale burst.yml -e burst_state=drain"
    scale(GROUP, 1)

    # (the runner's exit, wanted, current) -> the group's desired capacity afterwards
    for exit_code, wanted, current, desired in [
        (LOCK_HELD, 2, 1, 1),
        (0, 2, 1, 2),
        (LOCK_HELD, 1, 2, 2),
        (0, 1, 2, 1),
    ]:
        status.write_text(str(exit_code))
        assert burst(wanted, current) == exit_code
        assert describe_group(GROUP).desired == desired, (exit_code, wanted, current)
    assert calls.read_text().splitlines() == [ready, ready, drain, drain, ready]  # reopened: 1 instance left
