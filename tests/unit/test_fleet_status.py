"""The fleet status table with the load balancers' view, as `fab status` shows it."""

from __future__ import annotations

import json

import pytest

from fleet_ops.status import render, rows

pytestmark = pytest.mark.unit

RELEASE = {"runtime_version": "0.2.0", "model": "demo", "model_version": "v1", "state": "serving"}
RECORDS = {"a": {"instances": {"1": RELEASE, "2": RELEASE}}}
DESIRED = {"runtime_version": "0.2.0", "model": "demo"}


def test_each_instance_shows_what_the_balancers_say_of_it() -> None:
    pools = {
        "lb1": {"a-1": {"status": "UP", "sessions": 3}, "a-2": {"status": "DRAIN", "sessions": 0}},
        "lb2": {"a-1": {"status": "UP", "sessions": 1}},
    }
    shown = {row["instance"]: row["balancers"] for row in rows(RECORDS, DESIRED, pools)}
    assert shown == {"1": "UP", "2": "lb1 DRAIN, lb2 absent"}


def test_the_balancers_column_appears_only_with_their_view() -> None:
    assert "BALANCERS" not in render(RECORDS, DESIRED)
    table = render(RECORDS, DESIRED, pools={}).splitlines()
    assert table[0].split() == ["HOST", "INSTANCE", "RUNTIME", "MODEL", "SINCE", "RUN", "STATE", "BALANCERS"]
    assert table[1].split()[-1] == "-"  # no load balancer in the inventory
    assert json.loads(render(RECORDS, DESIRED, as_json=True, pools={}))["instances"][0]["balancers"] == "-"
