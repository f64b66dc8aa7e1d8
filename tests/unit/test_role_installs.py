"""Every package a role installs is pinned by its sha256: pip installs only from requirement files
(--require-hashes, so each line carries its hash), get_url checks a checksum, apt installs a downloaded
.deb only after such a check (packages by name come from apt's signed repositories), no command runs
an installer or a download of its own, and pip's default options ask no index (--no-index: the
wheelhouse). A check over the role files as they are, so that a new install task cannot slip in
unpinned."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harness import REPO

pytestmark = pytest.mark.unit

ROLES = REPO / "roles"
PIP = {"ansible.builtin.pip", "pip"}
GET_URL = {"ansible.builtin.get_url", "get_url"}
APT = {"ansible.builtin.apt", "apt", "ansible.builtin.package", "package"}
URI = {"ansible.builtin.uri", "uri"}
UNARCHIVE = {"ansible.builtin.unarchive", "unarchive"}
COMMANDS = {f"{prefix}{name}" for prefix in ("", "ansible.builtin.") for name in ("command", "shell", "raw")}
# What a command must not do on its own: install a package or fetch something.
INSTALLS = re.compile(
    r"\b(pip3?|easy_install|uv)\b.*\binstall\b|\bdpkg\s+(-i|--install)\b|\bapt(-get)?\s+install\b|\bcurl\b|\bwget\b"
)
PINNED_LINE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==\S+( --hash=sha256:[0-9a-f]{64})+$")


def role_tasks(tasks: list | None, where: str) -> Iterator[tuple[str, dict]]:
    """Every task of a task list, those inside block/rescue/always included."""
    for task in tasks or []:
        if not isinstance(task, dict):
            continue
        yield f"{where}: {task.get('name', '?')}", task
        for part in ("block", "rescue", "always"):
            yield from role_tasks(task.get(part), where)


def all_tasks() -> Iterator[tuple[str, str, str, dict]]:
    """(role, where, module, its arguments) for every task of every role."""
    for path in sorted(ROLES.glob("*/tasks/*.yml")):
        role = path.parts[-3]
        for where, task in role_tasks(yaml.safe_load(path.read_text()), str(path.relative_to(ROLES.parent))):
            for module in CHECKS.keys() & task.keys():
                arguments = task[module]
                free_form = {"_raw": arguments}  # `command: pip install x`
                yield role, where, module, arguments if isinstance(arguments, dict) else free_form


def pip_problems(arguments: dict, _checked: set[str]) -> list[str]:
    problems = []
    if "name" in arguments or "requirements" not in arguments:
        problems.append("pip installs by name, not from a hash-pinned requirements file")
    if "--require-hashes" not in str(arguments.get("extra_args", "")):
        problems.append("pip without --require-hashes")
    return problems


def get_url_problems(arguments: dict, _checked: set[str]) -> list[str]:
    return [] if arguments.get("checksum") else ["get_url without a checksum"]


def apt_problems(arguments: dict, checked: set[str]) -> list[str]:
    problems = ["apt allows unauthenticated packages"] if arguments.get("allow_unauthenticated") else []
    if "deb" in arguments and str(arguments["deb"]) not in checked:
        problems.append(f"apt installs {arguments['deb']}, which no checksummed get_url fetched")
    names = arguments.get("name", arguments.get("pkg", []))
    for name in [names] if isinstance(names, str) else names:
        if "://" in str(name) or str(name).endswith(".deb"):
            problems.append(f"apt installs {name} by URL or path, unchecked")
    return problems


def uri_problems(arguments: dict, _checked: set[str]) -> list[str]:
    return [f"uri downloads to {arguments['dest']} without a checksum"] if "dest" in arguments else []


def unarchive_problems(arguments: dict, _checked: set[str]) -> list[str]:
    remote = "://" in str(arguments.get("src", ""))
    return [f"unarchive fetches {arguments['src']} without a checksum"] if remote else []


def command_problems(arguments: dict, _checked: set[str]) -> list[str]:
    text = " ".join(map(str, arguments.get("argv", []))) + str(
        arguments.get("cmd", arguments.get("_raw", ""))
    )
    return [f"a command installs or downloads on its own: {text[:120]}"] if INSTALLS.search(text) else []


CHECKS = {
    **dict.fromkeys(PIP, pip_problems),
    **dict.fromkeys(GET_URL, get_url_problems),
    **dict.fromkeys(APT, apt_problems),
    **dict.fromkeys(URI, uri_problems),
    **dict.fromkeys(UNARCHIVE, unarchive_problems),
    **dict.fromkeys(COMMANDS, command_problems),
}


def unpinned_installs() -> list[str]:
    tasks = list(all_tasks())
    # What each role fetched with a checksum (a .deb that apt may then install).
    checked: dict[str, set[str]] = {}
    for role, _, module, arguments in tasks:
        if module in GET_URL and arguments.get("checksum"):
            checked.setdefault(role, set()).add(str(arguments.get("dest")))
    return [
        f"{where}: {problem}"
        for role, where, module, arguments in tasks
        for problem in CHECKS[module](arguments, checked.get(role, set()))
    ]


def test_every_install_task_is_pinned_by_hash() -> None:
    assert unpinned_installs() == []


def test_the_check_finds_an_unpinned_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above on a role that installs by name, downloads unchecked and runs pip itself."""
    tasks = tmp_path / "demo" / "tasks"
    tasks.mkdir(parents=True)
    fetch = {"url": "https://example.org/d.deb", "dest": "/d.deb"}
    (tasks / "main.yml").write_text(
        yaml.safe_dump([
            {"name": "by name", "ansible.builtin.pip": {"name": "torch==2.13.0"}},
            {"name": "unchecked", "block": [{"name": "fetch", "ansible.builtin.get_url": fetch}]},
            {"name": "install it", "ansible.builtin.apt": {"deb": "/d.deb"}},
            {"name": "by hand", "ansible.builtin.command": {"argv": ["pip", "install", "x"]}},
        ])
    )  # fmt: skip
    monkeypatch.setattr(f"{__name__}.ROLES", tmp_path)
    problems = "\n".join(unpinned_installs())
    for expected in (
        "by name: pip installs by name",
        "by name: pip without --require-hashes",
        "fetch: get_url without a checksum",
        "install it: apt installs /d.deb, which no checksummed get_url fetched",
        "by hand: a command installs or downloads on its own",
    ):
        assert expected in problems


def resolved(defaults: dict, value: object) -> str:
    """A default that is only another default ("{{ model_runtime_pip_args }}") is that default's value."""
    reference = re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", str(value).strip())
    return (
        resolved(defaults, defaults[reference.group(1)])
        if reference and reference.group(1) in defaults
        else str(value)
    )


def test_pip_asks_no_index_by_default() -> None:
    found = {}
    for path in sorted(ROLES.glob("*/defaults/main.yml")):
        defaults = yaml.safe_load(path.read_text()) or {}
        found.update(
            {name: resolved(defaults, value) for name, value in defaults.items() if name.endswith("pip_args")}
        )
    assert found, "no pip options in the roles' defaults"
    assert {name: value for name, value in found.items() if "--no-index" not in value.split()} == {}


def test_every_lock_the_roles_install_from_pins_hashes() -> None:
    for lock in sorted((REPO / "requirements").glob("*.lock")):
        lines = [line for line in lock.read_text().splitlines() if line and not line.startswith("#")]
        assert lines, f"{lock.name} pins nothing"
        assert [line for line in lines if not PINNED_LINE.match(line)] == [], lock.name
