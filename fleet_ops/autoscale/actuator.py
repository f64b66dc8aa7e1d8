"""Carrying out a decision: the scale.yml run operators use, through the control node's runner
(control_node role: bin/fleet-run), which takes the fleet's lock, logs the run and keeps its exit
status. A run that finds the lock taken is skipped (the runner exits 75) and the decision comes again
at the next reading."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

# The runner's exit status when another run holds the fleet's lock (flock -E 75).
LOCK_HELD = 75


@dataclass(frozen=True)
class ScaleRun:
    runner: str  # the control node's fleet-run
    playbook_args: Sequence[str] = ()  # more arguments for ansible-playbook (e.g. -e @file)
    name: str = "autoscale"  # the runner's log and status file: <name>.log, <name>.status

    def command(self, replicas: int) -> list[str]:
        return [self.runner, self.name, "scale.yml", "-e", f"replicas={replicas}", *self.playbook_args]

    def __call__(self, replicas: int) -> int:
        """Run it to the end; its exit status (0: the fleet has `replicas` serving, LOCK_HELD: skipped)."""
        return subprocess.run(self.command(replicas), check=False, stdin=subprocess.DEVNULL).returncode
