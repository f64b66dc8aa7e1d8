"""The fleet lock (callback_plugins/fleet_lock.py) with the real ansible-playbook and the repo's
ansible.cfg: a run that changes the fleet holds it for its life; another, started meanwhile, changes
nothing and names the holder; read-only runs go on; a killed holder leaves no stale lock."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from callback_plugins.fleet_lock import LOCK_HELD, LOCK_NAME, FleetLock, LockHeld, holder_of, read_holder
from harness import REPO
from harness.playbooks import playbook, playbook_command, playbook_environment

pytestmark = pytest.mark.integration

# Waits for its flag file, so that the test decides when it ends; marks that it ran.
HOLDING = """\
- name: A run that holds the lock until told
  hosts: all
  gather_facts: false
  tasks:
    - name: Wait for the flag
      ansible.builtin.wait_for:
        path: "{{ flag }}"
        timeout: 120
"""
# Refused at once (the harness's runs otherwise wait for the lock).
AT_ONCE = {"MODEL_RUNTIME_FLEET_LOCK_WAIT": "0"}
# Would leave a mark: a refused run must not.
MARKING = """\
- name: A run that changes something
  hosts: all
  gather_facts: false
  tasks:
    - name: Leave a mark
      ansible.builtin.copy:
        content: "ran\\n"
        dest: "{{ mark }}"
        mode: "0600"
"""


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    """An inventory of one local host, in a folder of its own (the lock goes beside it)."""
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "hosts.yml").write_text(
        "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {REPO / '.venv/bin/python'}\n"
    )
    for name, text in (("hold.yml", HOLDING), ("mark.yml", MARKING), ("status.yml", MARKING)):
        (tmp_path / name).write_text(text)
    return inventory


@pytest.fixture
def holder(fleet: Path, tmp_path: Path) -> Iterator[subprocess.Popen]:
    """hold.yml running, holding the lock, as run upgrade-42."""
    command = playbook_command(tmp_path / "hold.yml", fleet, {"flag": str(tmp_path / "flag")})
    environment = playbook_environment({"MODEL_RUNTIME_RUN_ID": "upgrade-42"})
    process = subprocess.Popen(
        command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    lock = fleet / LOCK_NAME
    deadline = time.monotonic() + 60
    while read_holder(lock).get("pid") != process.pid:
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        assert time.monotonic() < deadline, "the holding run never took the lock"
        time.sleep(0.1)
    yield process
    (tmp_path / "flag").touch()
    process.wait(60)


def test_a_second_run_changes_nothing_and_names_the_holder(
    fleet: Path, tmp_path: Path, holder: subprocess.Popen
) -> None:
    mark = tmp_path / "mark"
    refused = playbook(tmp_path / "mark.yml", fleet, {"mark": str(mark)}, env=AT_ONCE)
    assert refused.returncode == LOCK_HELD, refused.output
    assert "is held by run upgrade-42 (hold.yml, user " in refused.output
    assert f"pid {holder.pid}, since " in refused.output
    assert "this run (mark.yml) changed nothing" in refused.output
    assert "PLAY [" not in refused.output  # stopped before its first play
    assert not mark.exists()
    # What changes nothing goes on: a read-only playbook (by its name), a check run.
    assert playbook(tmp_path / "status.yml", fleet, {"mark": str(mark)}).returncode == 0
    mark.unlink()
    assert playbook(tmp_path / "mark.yml", fleet, {"mark": str(mark)}, "--check").returncode == 0
    assert not mark.exists()
    # The holder ends: the next run takes the lock.
    (tmp_path / "flag").touch()
    assert holder.wait(60) == 0
    assert playbook(tmp_path / "mark.yml", fleet, {"mark": str(mark)}).returncode == 0
    assert mark.read_text() == "ran\n"


def test_a_run_may_wait_for_the_lock(fleet: Path, tmp_path: Path, holder: subprocess.Popen) -> None:
    mark = tmp_path / "mark"
    waiting = subprocess.Popen(
        playbook_command(tmp_path / "mark.yml", fleet, {"mark": str(mark)}),
        cwd=REPO, env=playbook_environment({"MODEL_RUNTIME_FLEET_LOCK_WAIT": "60"}),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(2)
    assert waiting.poll() is None  # it waits, having changed nothing
    assert not mark.exists()
    (tmp_path / "flag").touch()
    assert waiting.wait(60) == 0
    assert mark.read_text() == "ran\n"


def test_a_killed_holder_leaves_no_stale_lock(fleet: Path, tmp_path: Path, holder: subprocess.Popen) -> None:
    holder.send_signal(signal.SIGKILL)
    holder.wait(30)
    mark = tmp_path / "mark"
    # A worker of the killed run may finish the task it was in (and hold the lock that long): end it.
    (tmp_path / "flag").touch()
    # Then the lock is free, with nobody to clear anything by hand.
    free = FleetLock(fleet / LOCK_NAME)
    free.acquire(holder_of("test", {}), wait_s=60)
    free.release()
    assert playbook(tmp_path / "mark.yml", fleet, {"mark": str(mark)}).returncode == 0
    assert mark.exists()


def test_the_lock_in_process(tmp_path: Path) -> None:
    """As another tool would take it: the holder's line, never the command line (secrets in -e)."""
    path = tmp_path / LOCK_NAME
    first = FleetLock(path)
    first.acquire(holder_of("scale.yml", {"MODEL_RUNTIME_RUN_ID": "autoscale-1"}))
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(LockHeld, match=r"held by run autoscale-1 \(scale\.yml, user ") as held:
        FleetLock(path).acquire(holder_of("upgrade.yml", {}))
    assert set(held.value.holder) == {"run", "playbook", "user", "host", "pid", "since"}
    first.release()
    second = FleetLock(path)
    second.acquire(holder_of("upgrade.yml", {}))
    assert json.loads(path.read_text())["playbook"] == "upgrade.yml"
    second.release()
