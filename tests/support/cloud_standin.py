"""What AWS does with an auto scaling group's desired capacity, stood in for on this machine: the group
lives in moto's server (set through boto3, as the autoscaler sets it), and a local runtime instance
serves while the group's desired capacity is at least one, as a cloud instance behind the stack's
endpoint would (TLS from its own CA, the fleet's API key). AWS itself cannot run here."""

from __future__ import annotations

import threading
from pathlib import Path

import boto3

from fleet_ops.cloud_scale import describe_group
from harness.server import RuntimeProcess
from tests.support.pki import make_pki


def make_group(name: str, max_size: int) -> None:
    """An empty group (minimum 0, desired 0) in moto, as the stack leaves a burst group."""
    ec2 = boto3.client("ec2")
    template = ec2.create_launch_template(
        LaunchTemplateName=f"{name}-lt",
        LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "g6.xlarge"},
    )["LaunchTemplate"]
    boto3.client("autoscaling").create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateId": template["LaunchTemplateId"], "Version": "1"},
        MinSize=0,
        MaxSize=max_size,
        DesiredCapacity=0,
        AvailabilityZones=["us-east-1a"],
    )


class CloudStandIn:
    """One local instance that runs while the group wants one or more (polled every poll_s)."""

    def __init__(self, group: str, model: Path, workdir: Path, api_key: str, settings: dict) -> None:
        self.group = group
        self.pki = make_pki(workdir)
        keys = workdir / "cloud-api-keys"
        keys.write_text(f"{api_key}\n")
        keys.chmod(0o600)
        tls = {"tls_certfile": str(self.pki / "server.crt"), "tls_keyfile": str(self.pki / "server.key")}
        server = {**tls, "api_keys_file": str(keys)}
        self.instance = RuntimeProcess(model, workdir, {**settings, "server": server}, name="demo")
        self.port = self.instance.port
        self.started = 0  # how often it was started (a launch) and stopped (a termination)
        self.stopped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> CloudStandIn:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.instance.stop()

    def running(self) -> bool:
        return self.instance.process is not None and self.instance.process.poll() is None

    def _follow(self, poll_s: float = 0.5) -> None:
        while not self._stop.wait(poll_s):
            wanted = describe_group(self.group).desired
            if wanted > 0 and not self.running():
                self.instance.start(wait_ready=False)
                self.started += 1
            elif wanted == 0 and self.running():
                self.instance.stop()
                self.stopped += 1
