"""Rendering a role's templates outside a play: the test playbooks of tests/integration/playbooks, run
on localhost with extra variables, and stand-in executables for what a unit's ExecStart names."""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness import REPO
from harness.playbooks import BIN


def render(playbook: str, **extra: object) -> None:
    """tests/integration/playbooks/<playbook> with `-e key=value` for each extra; fails on an error."""
    arguments = [arg for key, value in extra.items() for arg in ("-e", f"{key}={value}")]
    done = subprocess.run(
        [str(BIN / "ansible-playbook"), str(REPO / "tests/integration/playbooks" / playbook), *arguments],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]


def stand_in(path: Path) -> Path:
    """An executable that does nothing (systemd-analyze wants each ExecStart to exist)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path
