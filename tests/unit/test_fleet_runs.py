"""A rolling run's batch plan, its batches, the minimum serving capacity it keeps per model, and which
run an undo puts back (fleet_ops/runs.py, the playbooks' filters)."""

from __future__ import annotations

import getpass

import pytest
import yaml

from callback_plugins.fleet_lock import RUN_ENV, run_id
from fleet_ops.runs import PlanError, batch_plan, batches, capacity_problems, changed_by, last_run
from harness import REPO

HOSTS = [f"h{i:02d}" for i in range(1, 13)]


@pytest.mark.parametrize(
    ("given", "plan"),
    [
        (1, [1]),
        ("2", [2]),
        ("25%", ["25%"]),
        ("1,10%,25%", [1, "10%", "25%"]),
        ("1, 10% ,100%", [1, "10%", "100%"]),
        ([1, "10%", 3], [1, "10%", 3]),
    ],
)
def test_batch_plans_in_every_form_an_operator_gives_them(given: object, plan: list) -> None:
    assert batch_plan(given) == plan


@pytest.mark.parametrize("given", ["0", "-1", "0%", "101%", "1,,2", "ten", "1.5", "", "5 %"])
def test_a_plan_ansible_would_misread_is_refused_naming_the_variable(given: str) -> None:
    with pytest.raises(PlanError, match=r"^batch: "):
        batch_plan(given)


def test_batches_are_ansibles_own_with_the_last_step_repeated() -> None:
    # 10% of 12 hosts rounds down to 1; 25% is 3; the last batch takes what is left.
    assert batches([1, "10%", "25%"], HOSTS) == [
        ["h01"], ["h02"], ["h03", "h04", "h05"], ["h06", "h07", "h08"], ["h09", "h10", "h11"], ["h12"],
    ]  # fmt: skip
    assert batches(["1%"], HOSTS[:3]) == [["h01"], ["h02"], ["h03"]]  # a share is at least one host
    assert batches([5], HOSTS[:3]) == [HOSTS[:3]]


def facts(models: dict[str, str], rolling: list[int] | None = None, scaled_in: tuple[int, ...] = ()) -> dict:
    return {
        "model_runtime_instance_models": models,
        "model_runtime_run_ids": rolling if rolling is not None else [int(i) for i in models],
        "model_runtime_scaled_in": list(scaled_in),
    }


def test_a_model_on_every_host_keeps_its_minimum_in_batches_of_all_but_that_many() -> None:
    fleet = {host: facts({"1": "demo"}) for host in HOSTS}
    assert capacity_problems([11], fleet, 1) == []
    assert capacity_problems(["25%"], fleet, 9) == []
    problems = capacity_problems([1, "50%"], fleet, 7)
    assert problems == [
        "model demo: batch 2 (h02, h03, h04, h05, h06, h07) would leave 6 of its 12 serving instances up, "
        "under fleet_min_serving 7"
    ]


def test_a_model_with_one_replica_cannot_roll_without_an_outage_unless_the_minimum_is_zero() -> None:
    fleet = {"a": facts({"1": "demo", "2": "demo", "3": "demo-int8"})}
    assert capacity_problems([1], fleet, 1) == [
        "model demo-int8: batch 1 (a) would leave 0 of its 1 serving instances up, under fleet_min_serving 1"
    ]
    assert capacity_problems([1], fleet, 0) == []
    # A run of the demo model alone (-e model=demo) leaves demo-int8 serving.
    assert capacity_problems([1], {"a": facts({"1": "demo", "2": "demo", "3": "demo-int8"}, [1, 2])}, 1) == []


def test_each_model_counts_its_own_serving_instances_and_not_the_stopped_ones() -> None:
    fleet = {
        "a": facts({"1": "demo", "2": "small"}),
        "b": facts({"1": "demo", "2": "small"}, scaled_in=(2,)),
        "c": facts({"1": "demo"}),
    }
    # small serves on a only (b's is scaled in): rolling a leaves none.
    assert capacity_problems([1], fleet, 1) == [
        "model small: batch 1 (a) would leave 0 of its 1 serving instances up, under fleet_min_serving 1"
    ]
    assert capacity_problems([1], {**fleet, "a": facts({"1": "demo", "2": "small"}, [1])}, 1) == []


def test_a_driver_change_takes_all_of_a_hosts_instances_and_skips_hosts_without_a_gpu() -> None:
    fleet = {"a": facts({"1": "demo", "2": "demo"}), "b": facts({"1": "demo"}), "c": facts({"1": "demo"})}
    assert capacity_problems([1], fleet, 2) == []  # one instance at a time per host
    assert capacity_problems([1], fleet, 2, whole_hosts=True) == []
    assert capacity_problems([1], fleet, 3, whole_hosts=True) == [
        "model demo: batch 1 (a) would leave 2 of its 4 serving instances up, under fleet_min_serving 3"
    ]
    assert capacity_problems([1], fleet, 3) == []  # a roll takes one of a's at a time
    without_gpu = {**fleet, "a": {**fleet["a"], "fleet_plan_rolling": []}}
    assert capacity_problems([1], without_gpu, 3, whole_hosts=True) == []


def record(instances: dict[str, tuple[str, str]], previous: tuple[str, ...] = ()) -> dict:
    """instances: id -> (run, since); previous: the ids with a release to go back to."""
    return {
        "instances": {
            i: {"run": run, "since": since, "model_version": "v"} for i, (run, since) in instances.items()
        },
        "previous": {i: {"model_version": "old"} for i in previous},
    }


def test_the_last_run_is_the_newest_change_among_the_instances_asked_about() -> None:
    a = {
        "model_runtime_record": record(
            {"1": ("site-1", "2026-12-01T10:00:00Z"), "2": ("upgrade-2", "2026-12-02T09:00:00Z")}
        ),
        "model_runtime_run_ids": [1, 2],
    }
    b = {
        "model_runtime_record": record(
            {"1": ("upgrade-2", "2026-12-02T09:01:00Z"), "3": ("int8-3", "2026-12-03T08:00:00Z")}
        ),
        "model_runtime_run_ids": [1],  # instance 3 serves another model: not asked about
    }
    assert last_run([a, b]) == "upgrade-2"
    assert last_run([{**b, "model_runtime_run_ids": [1, 3]}]) == "int8-3"
    assert last_run([{"model_runtime_record": {}, "model_runtime_run_ids": [1]}]) == ""


def test_an_undo_takes_exactly_the_runs_instances_that_can_go_back_the_last_first() -> None:
    host = record(
        {"1": ("upgrade-2", "t"), "2": ("site-1", "t"), "3": ("upgrade-2", "t"), "4": ("upgrade-2", "t")},
        previous=("1", "2", "3"),  # 4 was new in that run: nothing to go back to
    )
    assert changed_by(host, "upgrade-2") == [3, 1]
    assert changed_by(host, "site-1") == [2]
    assert changed_by(host, "") == []
    assert changed_by({}, "upgrade-2") == []


def test_a_run_is_named_once_for_all_its_hosts() -> None:
    assert (
        run_id("upgrade.yml", {RUN_ENV: "schedule-nightly-20261203T010000Z"}, 0)
        == "schedule-nightly-20261203T010000Z"
    )
    named = run_id("playbooks/upgrade.yml", {}, 1796292000.0)
    assert named.startswith("upgrade-20261203T")
    assert named.endswith("Z-" + getpass.getuser())


def test_no_rolling_play_sends_a_whole_batch_into_one_hosts_rescue() -> None:
    """With any_errors_fatal, ansible-core (2.17 on) runs a block's rescue on every host of the batch when
    one host fails in it: the hosts that rolled fine would take the failed one's way back. The plays that
    rescue a host (their own block, or an instance's rolling cycle) stop on max_fail_percentage instead."""
    rescuing = []
    for path in sorted((REPO / "playbooks").glob("*.yml")):
        for play in yaml.safe_load(path.read_text()) or []:
            text = yaml.safe_dump(play)
            if "hosts" in play and ("rescue:" in text or "tasks_from: roll.yml" in text):
                rescuing.append(path.name)
                assert not play.get("any_errors_fatal"), f"{path.name}: {play['name']}"
                assert play.get("max_fail_percentage") == 0, f"{path.name}: {play['name']}"
    assert {"upgrade.yml", "undo.yml", "restart.yml", "driver-upgrade.yml"} <= set(rescuing)
