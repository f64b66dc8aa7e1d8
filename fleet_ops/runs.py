"""What a rolling run does to a fleet, worked out before it does it and read back after it: its batch
plan (Ansible's `serial`), the batches that plan makes of the hosts, whether a batch would take more of
a model's serving instances out at once than the fleet allows, and, from the hosts' release records,
which run changed what last (what `rollback.yml` undoes). The playbooks use these as Jinja filters
(filter_plugins/fleet.py); the functions take plain data so that tests call them directly."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ansible.utils.helpers import pct_to_int

_STEP = re.compile(r"^(?:[1-9]\d*|(?:100|[1-9]\d?)%)$")


class PlanError(ValueError):
    pass


def batch_plan(value: Any) -> list[int | str]:
    """A batch plan as Ansible's `serial` takes it: `2`, `25%`, `1,10%,25%` or a list of those. Each
    batch is that many hosts or that share of the play's hosts; the last step repeats until every host
    has had its turn."""
    steps = value if isinstance(value, list) else str(value).split(",")
    plan: list[int | str] = []
    for step in steps:
        text = str(step).strip()
        if not _STEP.match(text):
            raise PlanError(
                f"batch: {value!r} is not a batch plan: give host counts (1 or more) and shares of the "
                "fleet (1% to 100%), comma-separated, e.g. 1,10%,25%"
            )
        plan.append(text if text.endswith("%") else int(text))
    if not plan:
        raise PlanError("batch: the batch plan is empty")
    return plan


def batches(plan: Sequence[int | str], hosts: Sequence[str]) -> list[list[str]]:
    """The hosts in the batches Ansible makes of them under serial: plan (its own arithmetic: a share
    rounds down, and is at least one host)."""
    left, made, step = list(hosts), [], 0
    while left:
        size = pct_to_int(plan[step], len(hosts))
        made.append(left[:size])
        left = left[size:]
        step = min(step + 1, len(plan) - 1)
    return made


def capacity_problems(
    plan: Sequence[int | str],
    hosts: Mapping[str, Mapping[str, Any]],
    min_serving: int,
    whole_hosts: bool = False,
) -> list[str]:
    """Why rolling `hosts` (in play order) in the batches of plan would leave some model with fewer than
    min_serving instances serving, one line per model and batch (none: the plan is safe).

    hosts maps each host to its facts from the model_runtime role: model_runtime_instance_models
    (instance -> model), model_runtime_run_ids (the instances this run acts on) and
    model_runtime_scaled_in (instances kept stopped, which roll stopped). A host rolls its instances one
    at a time, so a batch takes at most one instance of a model out per host; with whole_hosts (a
    driver change) it takes all of them out at once. A host whose facts say which instances it rolls
    (fleet_plan_rolling: those a rollback's run changed; none on a host without a GPU, for a driver
    change) takes out those only, and keeps its place in the batches."""
    serving: Counter[str] = Counter()
    rolled: dict[str, Counter[str]] = {}
    for host, facts in hosts.items():
        models = facts["model_runtime_instance_models"]
        stopped = {int(i) for i in facts["model_runtime_scaled_in"]}
        serving.update(model for instance, model in models.items() if int(instance) not in stopped)
        rolling = facts.get("fleet_plan_rolling", facts["model_runtime_run_ids"])
        out = Counter(models[str(i)] for i in rolling if int(i) not in stopped)
        rolled[host] = out if whole_hosts else Counter(set(out))
    problems = []
    for number, batch in enumerate(batches(plan, list(hosts)), start=1):
        taken = sum((rolled[host] for host in batch), Counter())
        for model, out in sorted(taken.items()):
            if serving[model] - out < min_serving:
                problems.append(
                    f"model {model}: batch {number} ({', '.join(batch)}) would leave {serving[model] - out} "
                    f"of its {serving[model]} serving instances up, under fleet_min_serving {min_serving}"
                )
    return problems


def last_run(hosts: Iterable[Mapping[str, Any]]) -> str:
    """The run that changed an instance last ('' when none did), over the hosts' facts from the
    model_runtime role: model_runtime_record (the release record) and model_runtime_run_ids (the
    instances this run acts on: -e model=NAME asks for the last run that changed that model)."""
    entries = [
        entry
        for facts in hosts
        for instance, entry in (facts["model_runtime_record"].get("instances") or {}).items()
        if int(instance) in facts["model_runtime_run_ids"] and entry.get("run") and entry.get("since")
    ]
    return max(entries, key=lambda entry: entry["since"])["run"] if entries else ""


def changed_by(record: Mapping[str, Any], run: str) -> list[int]:
    """The instances of one host's record that run changed and that have a release to go back to, the
    last first (an undo goes in reverse order)."""
    previous = record.get("previous") or {}
    return sorted(
        (
            int(instance)
            for instance, entry in (record.get("instances") or {}).items()
            if run and entry.get("run") == run and instance in previous
        ),
        reverse=True,
    )
