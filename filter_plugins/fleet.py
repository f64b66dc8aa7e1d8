"""Jinja filters for the fleet playbooks: the status table `fab status` prints too, and the timed
line of an instance's rolling cycle that bench/upgrade.py reads back."""

from __future__ import annotations

from model_runtime.fleet.cycle import cycle_line
from model_runtime.fleet.status import render


class FilterModule:
    def filters(self) -> dict:
        return {"fleet_table": render, "cycle_line": cycle_line}
