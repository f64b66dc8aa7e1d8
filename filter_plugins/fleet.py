"""Jinja filters for the fleet playbooks: the status table `fab status` prints too, the timed line of
an instance's rolling cycle that bench/upgrade.py reads back, the name of a model's backend at the
load balancers, and a rolling run's batches and undo (fleet_ops/runs.py)."""

from __future__ import annotations

import sys
from pathlib import Path

# fleet_ops lives in the checkout beside the playbooks, not in any installed package, and
# ansible-playbook puts only its own folder on the path: the repository root goes first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet_ops.cycle import cycle_line
from fleet_ops.runs import batch_plan, capacity_problems, changed_by, last_run
from fleet_ops.status import render
from module_utils.haproxy_runtime import model_backend


class FilterModule:
    def filters(self) -> dict:
        return {
            "fleet_table": render,
            "cycle_line": cycle_line,
            "model_backend": model_backend,
            "batch_plan": batch_plan,
            "capacity_problems": capacity_problems,
            "changed_by": changed_by,
            "last_run": last_run,
        }
