"""The fleet's schedule file (`fleet_schedules`, shared with the bare-metal control node) read for the
cloud: scale entries become the auto scaling group's scheduled actions.

An upgrade entry has no scheduled action: in the cloud an upgrade is a change of the stack's
configuration (a new launch template version), and the instance refresh it triggers is the rolling
upgrade. So upgrade entries are skipped here, and `pulumi up` says so once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

# The control_node role's own checks, so that a file both targets accept is one file.
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,?#L-]+$")


class ScheduleError(ValueError):
    """A schedule file or entry that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class Schedule:
    name: str
    kind: str  # scale or upgrade
    cron: str  # five fields, UTC
    replicas: int | None = None


def load_schedules(path: Path) -> list[Schedule]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ScheduleError(f"{path}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ScheduleError(f"{path}: not YAML ({exc})") from None
    entries = (data or {}).get("fleet_schedules") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ScheduleError(f"{path}: no fleet_schedules list")
    schedules = [_entry(path, index, entry) for index, entry in enumerate(entries)]
    names = [s.name for s in schedules]
    for name in names:
        if names.count(name) > 1:
            raise ScheduleError(f"{path}: schedule {name} is defined twice")
    return schedules


def _entry(path: Path, index: int, entry: object) -> Schedule:
    where = f"{path}: fleet_schedules[{index}]"
    if not isinstance(entry, dict):
        raise ScheduleError(f"{where}: not a mapping")
    name = str(entry.get("name", ""))
    if not _NAME.match(name):
        raise ScheduleError(f"{where}: name {name!r} must be a-z, 0-9 and '-'")
    where = f"{path}: schedule {name}"
    kind = entry.get("kind")
    if kind not in ("scale", "upgrade"):
        raise ScheduleError(f"{where}: kind must be scale or upgrade, got {kind!r}")
    cron = str(entry.get("cron", ""))
    fields = cron.split()
    if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
        raise ScheduleError(f"{where}: cron {cron!r} is not a five-field cron expression")
    replicas = entry.get("replicas")
    whole = isinstance(replicas, int) and not isinstance(replicas, bool) and replicas >= 0
    if kind == "scale" and not whole:
        raise ScheduleError(f"{where}: a scale run needs replicas, a whole number >= 0, got {replicas!r}")
    return Schedule(name, kind, " ".join(fields), replicas if kind == "scale" else None)


def scale_actions(schedules: list[Schedule], min_size: int, max_size: int, source: str) -> list[Schedule]:
    """The scale entries, each checked against the group's bounds (AWS would refuse the action
    only when it fires, at night, with nobody watching)."""
    actions = [s for s in schedules if s.kind == "scale"]
    for schedule in actions:
        assert schedule.replicas is not None
        if schedule.replicas < min_size:
            raise ScheduleError(
                f"{source}: schedule {schedule.name} asks for {schedule.replicas} replicas, "
                f"below the group's minimum fleet.minSize ({min_size})"
            )
        if schedule.replicas > max_size:
            raise ScheduleError(
                f"{source}: schedule {schedule.name} asks for {schedule.replicas} replicas, "
                f"above the group's maximum fleet.maxSize ({max_size})"
            )
    return actions
