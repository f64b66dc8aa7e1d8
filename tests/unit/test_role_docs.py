"""Each role's README is generated from its argument spec (scripts/role_docs.py): a spec change without
regenerating the README fails here. And the specs are complete: every entry point that a playbook or a
role includes has one, every spec names a task file that exists, the variables a role sets with its own
public prefix are ones its spec documents (the others wear `__<role>_`), and the playbooks set only
role arguments or fleet-level names."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from scripts import role_docs

pytestmark = pytest.mark.unit

ROLES = role_docs.ROLES
PLAYBOOKS = ROLES.parent / "playbooks"
INCLUDE_ROLE = {"ansible.builtin.include_role", "ansible.builtin.import_role"}
SET_FACT = "ansible.builtin.set_fact"


def specs(role: str) -> dict[str, dict]:
    """Entry point -> its spec, from the role's meta/argument_specs.yml."""
    return yaml.safe_load((ROLES / role / "meta" / "argument_specs.yml").read_text())["argument_specs"]


def arguments(role: str) -> set[str]:
    """Every variable an entry point of `role` takes."""
    return {name for spec in specs(role).values() for name in spec.get("options") or {}}


ROLE_NAMES = sorted(path.name for path in ROLES.iterdir() if (path / "tasks").is_dir())
# Every variable some role takes as an argument, and every fact a role publishes (its spec says so).
ARGUMENTS = set().union(*map(arguments, ROLE_NAMES))
PUBLISHED = {
    role: " ".join(" ".join(role_docs.paragraphs(spec.get("description"))) for spec in specs(role).values())
    for role in ROLE_NAMES
}


def tasks_in(tasks: list | None) -> Iterator[dict]:
    """Every task of a task list, those inside block/rescue/always included."""
    for task in tasks or []:
        yield task
        for part in ("block", "rescue", "always"):
            yield from tasks_in(task.get(part))


def task_files(folder: Path) -> Iterator[tuple[Path, dict]]:
    for path in sorted(folder.glob("*.yml")):
        for task in tasks_in(yaml.safe_load(path.read_text())):
            yield path, task


def playbook_tasks() -> Iterator[tuple[Path, dict]]:
    for path in sorted(PLAYBOOKS.glob("*.yml")):
        for play in yaml.safe_load(path.read_text()):
            yield path, {"vars": play.get("vars") or {}}
            for part in ("pre_tasks", "tasks", "post_tasks"):
                for task in tasks_in(play.get(part)):
                    yield path, task


def variables_set(task: dict) -> set[str]:
    """The names a task defines: its vars, its facts, what it registers, its loop variable."""
    names = set(task.get("vars") or {}) | set(task.get(SET_FACT) or {}) - {"cacheable"}
    names |= {task["register"]} if "register" in task else set()
    names |= {task["loop_control"]["loop_var"]} if "loop_var" in task.get("loop_control", {}) else set()
    return names


@pytest.mark.parametrize("role", role_docs.roles(), ids=lambda role: role.name)
def test_each_role_readme_is_what_its_spec_says(role: Path) -> None:
    assert (role / "README.md").read_text() == role_docs.render(role), (
        f"roles/{role.name}/README.md is stale: run python scripts/role_docs.py"
    )


def test_every_role_has_a_spec_and_a_readme() -> None:
    assert [path.name for path in role_docs.roles()] == ROLE_NAMES


def test_check_fails_on_a_stale_readme_and_passes_once_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(ROLES / "supervisord", tmp_path / "supervisord")
    readme = tmp_path / "supervisord" / "README.md"
    row = "| `supervisord_prefix` | str |"
    readme.write_text(readme.read_text().replace(row, row.replace("str", "int")))
    monkeypatch.setattr(role_docs, "ROLES", tmp_path)
    monkeypatch.setattr(sys, "argv", ["role_docs.py", "--check"])
    assert role_docs.main() == 1
    monkeypatch.setattr(sys, "argv", ["role_docs.py"])
    assert role_docs.main() == 0
    monkeypatch.setattr(sys, "argv", ["role_docs.py", "--check"])
    assert role_docs.main() == 0


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_every_spec_names_a_task_file(role: str) -> None:
    assert [entry for entry in specs(role) if not (ROLES / role / "tasks" / f"{entry}.yml").exists()] == []


def test_every_entry_point_included_by_a_playbook_or_a_role_has_a_spec() -> None:
    included = [
        (path, task[module]["name"], Path(task[module].get("tasks_from", "main")).stem)
        for folder in [PLAYBOOKS, *(ROLES / role / "tasks" for role in ROLE_NAMES)]
        for path, task in (playbook_tasks() if folder == PLAYBOOKS else task_files(folder))
        for module in INCLUDE_ROLE & task.keys()
    ]
    assert included
    missing = [f"{path.name}: {role} {entry}" for path, role, entry in included if entry not in specs(role)]
    assert missing == []


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_variables_a_role_sets_with_its_public_prefix_are_documented(role: str) -> None:
    """A role's internal variables wear `__<role>_`; what it sets as `<role>_...` is an argument of one
    of its entry points or a fact its spec says it publishes."""
    undocumented = {
        f"{path.name}: {name}"
        for path, task in task_files(ROLES / role / "tasks")
        for name in variables_set(task)
        if name.startswith(f"{role}_") and name not in ARGUMENTS and name not in PUBLISHED[role]
    }
    assert undocumented == set()


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_every_default_is_an_argument_of_an_entry_point(role: str) -> None:
    defaults = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text()) or {}
    assert {name for name in defaults if not name.startswith(f"__{role}_")} - arguments(role) == set()


def test_playbooks_set_only_role_arguments_and_fleet_names() -> None:
    """Command-line shorthands (`-e model=...`, `batch`, `replicas`, `json`) are read where they are
    documented; what a playbook defines or passes is a role's argument or a fleet-level `fleet_` name."""
    strays = {
        f"{path.name}: {name}"
        for path, task in playbook_tasks()
        for name in variables_set(task)
        if name not in ARGUMENTS and not name.startswith(("fleet_", "site_"))
    }
    assert strays == set()
