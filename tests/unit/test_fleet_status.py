"""The fleet status table with the load balancers' view, as `fab status` shows it."""

from __future__ import annotations

import json

import pytest

from fleet_ops.status import render, rows

pytestmark = pytest.mark.unit

RELEASE = {"runtime_version": "0.2.0", "model": "demo", "model_version": "v1", "state": "serving"}
RECORDS = {"a": {"instances": {"1": RELEASE, "2": RELEASE}}}
DESIRED = {"demo": {"runtime_version": "0.2.0", "model": "demo"}}


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
    assert table[0].split() == [
        "HOST", "INSTANCE", "RUNTIME", "ENGINE", "MODEL", "SINCE", "RUN", "STATE", "BALANCERS"
    ]  # fmt: skip
    assert table[1].split()[-1] == "-"  # no load balancer in the inventory
    assert json.loads(render(RECORDS, DESIRED, as_json=True, pools={}))["instances"][0]["balancers"] == "-"


def test_the_engine_and_its_parallel_sizes_are_part_of_the_release() -> None:
    vllm = {**RELEASE, "engine": "vllm", "tensor_parallel_size": 2, "pipeline_parallel_size": 1}
    records = {"a": {"instances": {"1": RELEASE, "2": vllm}}}
    # The playbooks hand over numbers as text or as numbers: either way the same release.
    wanted = {
        "demo": {
            **DESIRED["demo"],
            "engine": "vllm",
            "tensor_parallel_size": "2",
            "pipeline_parallel_size": "1",
        }
    }
    assert [row["differs"] for row in rows(records, wanted)] == [True, False]
    # A record from before engines were recorded ran on auto, with one device.
    before = {
        "demo": {**DESIRED["demo"], "engine": "auto", "tensor_parallel_size": 1, "pipeline_parallel_size": 1}
    }
    assert [row["differs"] for row in rows(records, before)] == [False, True]
    table = render(records, wanted).splitlines()
    assert [line.split()[3:5] for line in table[1:3]] == [["auto", "demo@v1"], ["vllm", "tp2"]]
    assert table[-1] == "desired: 0.2.0 (vllm tp2) serving demo@any; 1 of 2 instances differ"


def test_each_instance_is_compared_with_what_its_own_model_wants() -> None:
    int8 = {**RELEASE, "model": "demo-int8", "model_version": "q1"}
    records = {"a": {"instances": {"1": RELEASE, "2": int8, "3": {**RELEASE, "model": "gone"}}}}
    wanted = {
        "demo": {"runtime_version": "0.2.0", "model": "demo", "model_version": "v1"},
        "demo-int8": {"runtime_version": "0.2.0", "model": "demo-int8", "model_version": "q2"},
    }
    # demo is as wanted; demo-int8 runs q1, not q2; "gone" is no model of the inventory's.
    assert [row["differs"] for row in rows(records, wanted)] == [False, True, True]
    assert render(records, wanted).splitlines()[-1] == (
        "desired: 0.2.0 (auto) serving demo@v1; 0.2.0 (auto) serving demo-int8@q2; 2 of 3 instances differ"
    )
