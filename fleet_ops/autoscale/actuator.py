"""Carrying out a decision. Metal: the scale.yml run operators use. Cloud (burst): the group's desired
capacity through the AWS API, with burst.yml putting the burst servers at the load balancers in the
overflow path after a raise, and draining them (until their sessions end) before a lowering. Every run
goes through the control node's runner (control_node role: bin/fleet-run), which takes the fleet's
lock, logs the run and keeps its exit status. A run that finds the lock taken is skipped (the runner
exits 75) and the decision comes again at the next reading."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from fleet_ops.autoscale.policy import CloudGroup
from fleet_ops.cloud_scale import CloudError, describe_group, scale

log = logging.getLogger("fleet_ops.autoscale")

# The runner's exit status when another run holds the fleet's lock (callback_plugins/fleet_lock.py).
LOCK_HELD = 75
# What a cloud action that AWS refused exits with (like a failed run).
CLOUD_FAILED = 1


@dataclass(frozen=True)
class Runner:
    runner: str  # the control node's fleet-run
    playbook_args: Sequence[str] = ()  # more arguments for ansible-playbook (e.g. -e @file)
    name: str = "autoscale"  # the runner's log and status file: <name>.log, <name>.status

    def command(self, playbook: str, **extra_vars: object) -> list[str]:
        extra = [arg for key, value in extra_vars.items() for arg in ("-e", f"{key}={value}")]
        return [self.runner, self.name, playbook, *extra, *self.playbook_args]

    def __call__(self, playbook: str, **extra_vars: object) -> int:
        """Run it to the end; its exit status (0: done, LOCK_HELD: skipped)."""
        command = self.command(playbook, **extra_vars)
        return subprocess.run(command, check=False, stdin=subprocess.DEVNULL).returncode


@dataclass(frozen=True)
class ScaleRun:
    run: Runner

    def __call__(self, replicas: int) -> int:
        """scale.yml to `replicas` serving instances."""
        return self.run("scale.yml", replicas=replicas)


@dataclass(frozen=True)
class CloudBurst:
    run: Runner
    group: str  # the auto scaling group (the stack's autoscalingGroupName)
    client: object = None  # boto3's autoscaling client (the region and endpoint of the configuration)

    def size(self) -> CloudGroup:
        found = describe_group(self.group, self.client)
        return CloudGroup(desired=found.desired, min_size=found.min_size, max_size=found.max_size)

    def __call__(self, wanted: int, current: int) -> int:
        """Open the overflow path, then raise the group (a burst server with no instance behind it yet
        stays down at the load balancers' health checks: a path opened first costs nothing, and a run
        that finds the lock taken has changed nothing); or drain the path (until the burst servers are
        idle), lower the group, and open it again if the group keeps instances."""
        try:
            if wanted > current:
                opened = self.run("burst.yml", burst_state="ready")
                if opened == 0:
                    scale(self.group, wanted, self.client)
                return opened
            drained = self.run("burst.yml", burst_state="drain")
            if drained != 0:
                return drained
            scale(self.group, wanted, self.client)
        except CloudError as error:
            log.warning("cloud: %s", error)
            return CLOUD_FAILED
        return self.run("burst.yml", burst_state="ready") if wanted > 0 else 0
