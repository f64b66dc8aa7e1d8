"""The shared schedule file read for the cloud: scale entries become scheduled actions, upgrade
entries are skipped, and a bad entry is refused naming the file and the entry."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infra.facts import REPO
from infra.schedules import Schedule, ScheduleError, load_schedules, scale_actions

pytestmark = pytest.mark.unit


def schedule_file(tmp_path: Path, entries: object) -> Path:
    path = tmp_path / "schedules.yml"
    path.write_text(yaml.safe_dump({"fleet_schedules": entries}))
    return path


@pytest.mark.parametrize("inventory", ["example", "local"])
def test_the_inventories_schedules_are_read_as_the_control_node_reads_them(inventory: str) -> None:
    path = REPO / "inventories" / inventory / "group_vars/all/schedules.yml"
    raw = yaml.safe_load(path.read_text())["fleet_schedules"]
    schedules = load_schedules(path)
    assert [(s.name, s.kind, s.cron, s.replicas) for s in schedules] == [
        (e["name"], e["kind"], e["cron"], e.get("replicas")) for e in raw
    ]
    actions = scale_actions(schedules, 0, 10, str(path))
    assert [a.name for a in actions] == [e["name"] for e in raw if e["kind"] == "scale"]
    assert all(a.kind == "scale" for a in actions)


@pytest.mark.parametrize(
    ("entries", "says"),
    [
        ([{"name": "Mornings", "kind": "scale", "cron": "0 8 * * *", "replicas": 2}], "name 'Mornings'"),
        (
            [{"name": "mornings", "kind": "resize", "cron": "0 8 * * *", "replicas": 2}],
            "kind must be scale or upgrade",
        ),
        ([{"name": "mornings", "kind": "scale", "cron": "0 8 * *", "replicas": 2}], "not a five-field cron"),
        (
            [{"name": "mornings", "kind": "scale", "cron": "0 8 * * *"}],
            "schedule mornings: a scale run needs replicas",
        ),
        ([{"name": "mornings", "kind": "scale", "cron": "0 8 * * *", "replicas": "two"}], "needs replicas"),
        (
            [
                {"name": "a", "kind": "upgrade", "cron": "0 3 * * 0"},
                {"name": "a", "kind": "upgrade", "cron": "0 4 * * 0"},
            ],
            "schedule a is defined twice",
        ),
        ("weekly", "no fleet_schedules list"),
    ],
)
def test_a_bad_entry_is_refused_naming_it(tmp_path: Path, entries: object, says: str) -> None:
    path = schedule_file(tmp_path, entries)
    with pytest.raises(ScheduleError) as caught:
        load_schedules(path)
    assert str(caught.value).startswith(str(path))
    assert says in str(caught.value)


def test_replicas_outside_the_group_bounds_are_refused() -> None:
    schedules = [Schedule("nights", "scale", "0 0 * * *", 0), Schedule("days", "scale", "0 8 * * *", 5)]
    with pytest.raises(
        ScheduleError, match=r"schedule nights asks for 0 replicas, below .* fleet.minSize \(1\)"
    ):
        scale_actions(schedules, 1, 5, "s.yml")
    with pytest.raises(
        ScheduleError, match=r"schedule days asks for 5 replicas, above .* fleet.maxSize \(4\)"
    ):
        scale_actions(schedules, 0, 4, "s.yml")
    assert scale_actions(schedules, 0, 5, "s.yml") == schedules
