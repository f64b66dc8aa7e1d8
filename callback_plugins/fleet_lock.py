"""One state-changing run of a fleet at a time, whoever starts it: an operator's ansible-playbook, a
scheduled run (fleet-run), the autoscaler's scale runs, Fabric's tasks (they run the playbooks).

The lock is an flock on one file beside the inventory (`.fleet.lock` in its folder, or
MODEL_RUNTIME_FLEET_LOCK), taken by the ansible-playbook process itself as the playbook starts, before
any play, and held until that process and its workers end, however they end: the kernel drops the
lock (a worker of a killed run may first finish the task it was in), so no stale lock is left to
clear by hand. The file says who holds it (run id, playbook, user, host,
process, since when: never the command line, whose extra vars may hold secrets). A run that finds the
lock taken changes nothing: it names the holder and exits with LOCK_HELD (75), as `flock -n -E 75`
did for the scheduled runs, after waiting up to MODEL_RUNTIME_FLEET_LOCK_WAIT seconds (default 0).

The run gets its id here too, where none was given (MODEL_RUNTIME_RUN_ID: `upgrade-20261203T101500Z-alice`),
before any host is reached, so that every host of the run writes the same id into its release record
and a rollback can find exactly what this run changed (`rollback.yml -e run=ID`).

Runs that change nothing take no lock: the read-only playbooks (READ_ONLY), --check, --syntax-check
and the --list-* options. Neither does an inventory that is not a file or folder ("host1,host2,": a
cloud instance configuring itself).
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: fleet_lock
type: aggregate
short_description: One state-changing run of a fleet at a time
description:
  - Takes an flock on the inventory's .fleet.lock as a playbook starts and holds it for the run; a run
    that finds it taken names the holder and exits 75 before any play.
requirements:
  - enabled in ansible.cfg (callbacks_enabled)
"""

import fcntl
import getpass
import json
import os
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from ansible import constants, context
from ansible.plugins.callback import CallbackBase

LOCK_HELD = 75
LOCK_NAME = ".fleet.lock"
LOCK_ENV = "MODEL_RUNTIME_FLEET_LOCK"
WAIT_ENV = "MODEL_RUNTIME_FLEET_LOCK_WAIT"
RUN_ENV = "MODEL_RUNTIME_RUN_ID"
# Playbooks that only read the fleet.
READ_ONLY = frozenset({"status.yml", "preflight.yml"})
# ansible-playbook's options under which nothing changes.
NOTHING_CHANGES = ("check", "syntax", "listhosts", "listtasks", "listtags")


class LockHeld(Exception):
    def __init__(self, path: Path, holder: Mapping[str, Any]) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"the fleet's lock ({path}) is held by {describe(holder)}")


def describe(holder: Mapping[str, Any]) -> str:
    """The holder in one line: `run R (upgrade.yml, user U on host H, pid P, since T)`."""
    if not holder:
        return "a run that has not said who it is yet"
    run = holder.get("run") or "without an id"
    return (
        f"run {run} ({holder.get('playbook', '?')}, user {holder.get('user', '?')} on "
        f"{holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {holder.get('since', '?')})"
    )


class FleetLock:
    """The flock on path, held while this object's file stays open (the process's life)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO | None = None

    def acquire(self, holder: Mapping[str, Any], wait_s: float = 0.0) -> None:
        """Take the lock and write holder into it; LockHeld (naming who holds it) when another
        process still holds it after wait_s seconds."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Not truncated on open: the holder's line stays readable to a run that is refused.
        handle = open(self.path, "a+")  # noqa: SIM115 (held open for the run's life)
        os.chmod(self.path, 0o600)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    held = read_holder(self.path)
                    handle.close()
                    raise LockHeld(self.path, held) from None
                time.sleep(0.5)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(dict(holder), sort_keys=True) + "\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_holder(path: Path) -> dict[str, Any]:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def lock_path(sources: Sequence[str], environ: Mapping[str, str]) -> Path | None:
    """The lock of the fleet that these inventory sources describe: MODEL_RUNTIME_FLEET_LOCK, or
    .fleet.lock in the folder of the first source that is a file or folder; None for host lists."""
    if environ.get(LOCK_ENV):
        return Path(environ[LOCK_ENV])
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            return path.resolve() / LOCK_NAME
        if path.is_file():
            return path.resolve().parent / LOCK_NAME
    return None


def run_id(playbook: str, environ: Mapping[str, str], now: float) -> str:
    """The run's id: MODEL_RUNTIME_RUN_ID as given (a scheduled run names itself), or the playbook, the
    time and the user: `upgrade-20261203T101500Z-alice`."""
    given = environ.get(RUN_ENV, "").strip()
    if given:
        return given
    return f"{Path(playbook).stem}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}-{getpass.getuser()}"


def holder_of(playbook: str, environ: Mapping[str, str]) -> dict[str, Any]:
    return {
        "run": environ.get(RUN_ENV, ""),
        "playbook": playbook,
        "user": getpass.getuser(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "fleet_lock"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._lock: FleetLock | None = None

    def v2_playbook_on_start(self, playbook: Any) -> None:
        name = Path(playbook._file_name).name
        # Forked workers inherit it: the model_runtime role's model_runtime_run_id reads it there.
        os.environ[RUN_ENV] = run_id(name, os.environ, time.time())
        options = context.CLIARGS
        if name in READ_ONLY or any(options.get(option) for option in NOTHING_CHANGES):
            return
        sources = options.get("inventory") or constants.DEFAULT_HOST_LIST or []
        path = lock_path([sources] if isinstance(sources, str) else list(sources), os.environ)
        if path is None:
            return
        lock = FleetLock(path)
        try:
            lock.acquire(holder_of(name, os.environ), float(os.environ.get(WAIT_ENV) or 0))
        except LockHeld as held:
            self._display.error(f"{held}: this run ({name}) changed nothing; run it again once that one ends")
            # Not an Exception: Ansible reports those from a callback and goes on. The run stops here,
            # before its first play, with the status scheduled runs and the autoscaler know.
            raise SystemExit(LOCK_HELD) from None
        self._lock = lock
