"""Running the real ansible-playbook (from tests and benchmarks), and reading its recap; the fleet's
wheelhouses it installs from."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness import REPO
from harness.cache import CACHE, one_builder

BIN = Path(sys.executable).parent


def role_defaults(role: str) -> dict[str, Any]:
    """A role's defaults/main.yml as written (templates unresolved): the one definition of its ports,
    names and paths, which tests read rather than repeat."""
    return yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text())


@dataclass
class PlaybookRun:
    returncode: int
    output: str

    def recap(self) -> dict[str, dict[str, int]]:
        """host -> {"ok": .., "changed": .., "failed": .., ...} from the PLAY RECAP."""
        hosts: dict[str, dict[str, int]] = {}
        for line in self.output.split("PLAY RECAP", 1)[-1].splitlines():
            match = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
            if match:
                hosts[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
        return hosts

    def changed(self) -> int:
        return sum(h.get("changed", 0) for h in self.recap().values())


def playbook_command(
    name: str | Path, inventory: Path, extra_vars: dict | None = None, *args: str
) -> list[str]:
    """ansible-playbook's command line. A name is one of playbooks/; a test's own playbook is given by
    its path."""
    command = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(REPO / "playbooks" / name), *args]
    return command + (["-e", json.dumps(extra_vars)] if extra_vars else [])


def playbook_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The repo's ansible.cfg (its plugins, the fleet lock among them), over this environment. A run
    waits for the fleet's lock, as an operator may ask (a scale run the autoscaler started holds it a
    while; test modules in parallel workers share inventories/local); a refused run is tested with a
    wait of 0."""
    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_FORCE_COLOR": "0",
        "MODEL_RUNTIME_FLEET_LOCK_WAIT": "900",
        **(env or {}),
    }


def playbook(
    name: str | Path,
    inventory: Path,
    extra_vars: dict | None = None,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 1200,
) -> PlaybookRun:
    done = subprocess.run(
        playbook_command(name, inventory, extra_vars, *args),
        cwd=REPO, env=playbook_environment(env), capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    return PlaybookRun(done.returncode, done.stdout + done.stderr)


def ensure_wheelhouse() -> Path:
    """The fleet's offline wheelhouse (scripts/wheelhouse.py; quick when up to date)."""
    with one_builder("wheelhouse"):
        subprocess.run(
            [sys.executable, str(REPO / "scripts" / "wheelhouse.py")], check=True, stdout=subprocess.DEVNULL
        )
    return CACHE / "wheelhouse"


def release_wheelhouse(target: Path, label: str) -> tuple[Path, str]:
    """A second runtime release to roll to: only its wheel, labelled `label` (its dependencies are in
    the fleet's wheelhouse). Returns the folder and the release's version."""
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "wheelhouse.py"), str(target), "--version-label", label,
         "--runtime-only"],
        check=True, capture_output=True,
    )  # fmt: skip
    target.chmod(0o755)  # the test hosts' users read it too
    return target, (target / "RUNTIME_VERSION").read_text().strip()
