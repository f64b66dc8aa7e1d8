"""HAProxy's runtime API (the admin stats socket): the one client of the fleet's load balancers.

Used by the haproxy_server module (Ansible ships this file with it, as ansible.module_utils.haproxy_runtime),
by `fab status` (which runs this file with `python3 -c` on each load balancer: see `main`) and by the
tests (which read the stats page's CSV with the same parser). Standard library only, because it runs
on the load balancer hosts."""

from __future__ import annotations

import csv
import io
import json
import re
import socket
import sys
import time
from collections.abc import Callable

# The summary rows `show stat` adds to each proxy next to its servers.
SUMMARY_ROWS = ("FRONTEND", "BACKEND")
# srv_admin_state bits in `show servers state` (HAProxy's SRV_ADMF_*): forced/inherited/... maintenance
# and forced/inherited drain.
MAINT_BITS = 0x01 | 0x02 | 0x04 | 0x20 | 0x40
DRAIN_BITS = 0x08 | 0x10
ADMIN_STATES = ("ready", "drain", "maint")
POLL_S = 0.5


class HAProxyError(Exception):
    """HAProxy refused a command, does not know a server, or a wait ran out of time."""


def stats_rows(text: str) -> list[dict[str, str]]:
    """HAProxy's statistics CSV (the runtime API's `show stat`, or the stats page's `;csv`), read by its
    header: one dict per proxy row, so that callers name the columns they want (`svname`, `status`,
    `scur`, `check_status`...) instead of counting positions."""
    return list(csv.DictReader(io.StringIO(text.lstrip("# "))))


def model_backend(prefix: str, model: str) -> str:
    """The backend of a model's instances (the loadbalancer role names each <prefix>-<model>, where the
    prefix is its loadbalancer_backend_name)."""
    return f"{prefix}-{model}"


def server_rows(text: str, backend: str) -> list[dict[str, str]]:
    """The rows of the backend's servers in the statistics CSV (its FRONTEND/BACKEND rows left out)."""
    return [
        row
        for row in stats_rows(text)
        if row.get("pxname") == backend and row.get("svname") not in SUMMARY_ROWS
    ]


def model_server_rows(text: str, prefix: str) -> list[dict[str, str]]:
    """The rows of every model backend's servers (model_backend(prefix, any model))."""
    return [
        row
        for row in stats_rows(text)
        if (row.get("pxname") or "").startswith(model_backend(prefix, ""))
        and row.get("svname") not in SUMMARY_ROWS
    ]


def admin_states(text: str) -> dict[str, str]:
    """Server name -> ready, drain or maint, from `show servers state <backend>`: what the runtime API
    set. Not from the statistics' status column: a drained server whose health check fails shows DOWN
    there, and would pass for ready."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = next(line for line in lines if line.startswith("#")).lstrip("# ").split()
    states = {}
    for line in lines:
        fields = line.split()
        if line.startswith("#") or len(fields) < len(header):
            continue  # the format's version line, and the header itself
        row = dict(zip(header, fields, strict=False))
        admin = int(row["srv_admin_state"])
        states[row["srv_name"]] = (
            "maint" if admin & MAINT_BITS else "drain" if admin & DRAIN_BITS else "ready"
        )
    return states


def is_idle(row: dict[str, str]) -> bool:
    return int(row.get("scur") or 0) == 0


def is_up(row: dict[str, str]) -> bool:
    # "UP", or "UP 1/2" while a failed check has not yet taken it out.
    return row.get("status", "").startswith("UP")


class RuntimeAPI:
    """One backend of one HAProxy, through its admin socket."""

    def __init__(self, socket_path: str, backend: str) -> None:
        self.socket_path = socket_path
        self.backend = backend

    def ask(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(self.socket_path)
            conn.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers(self) -> dict[str, dict[str, str]]:
        """Server name -> its row of the statistics (status, scur, check_status, ...)."""
        return {row["svname"]: row for row in server_rows(self.ask("show stat"), self.backend)}

    def server(self, name: str) -> dict[str, str]:
        row = self.servers().get(name)
        if row is None:
            raise HAProxyError(f"HAProxy has no server {self.backend}/{name}")
        return row

    def admin_state(self, name: str) -> str:
        states = admin_states(self.ask(f"show servers state {self.backend}"))
        if name not in states:
            raise HAProxyError(f"HAProxy has no server {self.backend}/{name}")
        return states[name]

    def set_state(self, name: str, state: str) -> None:
        if state not in ADMIN_STATES:
            raise ValueError(f"state must be one of {', '.join(ADMIN_STATES)}, not {state!r}")
        reply = self.ask(f"set server {self.backend}/{name} state {state}").strip()
        if reply:
            raise HAProxyError(f"HAProxy refused to set {self.backend}/{name} {state}: {reply}")

    def wait(
        self, name: str, done: Callable[[dict[str, str]], bool], what: str, timeout_s: float
    ) -> dict[str, str]:
        """The server's row once `done` holds for it; HAProxyError (saying where it stands) after
        timeout_s seconds: a drain that does not end is a failure, never a silent go-ahead."""
        deadline = time.monotonic() + timeout_s
        while True:
            row = self.server(name)
            if done(row):
                return row
            if time.monotonic() > deadline:
                raise HAProxyError(
                    f"{self.backend}/{name} not {what} after {timeout_s:.0f}s "
                    f"(status {row.get('status')}, {row.get('scur') or 0} sessions)"
                )
            time.sleep(POLL_S)

    def wait_idle(self, name: str, timeout_s: float) -> dict[str, str]:
        return self.wait(name, is_idle, "idle", timeout_s)

    def wait_up(self, name: str, timeout_s: float) -> dict[str, str]:
        return self.wait(name, is_up, "UP", timeout_s)


def pool(rows: list[dict[str, str]]) -> dict[str, dict[str, str | int]]:
    """Each server's status (UP, DRAIN, MAINT, DOWN, "no check": without the counts of a state about to
    change, as in "UP 1/2") and its current sessions: what `fab status` shows."""
    return {
        row["svname"]: {
            "status": re.sub(r" \d+/\d+$", "", row.get("status") or "?"),
            "sessions": int(row.get("scur") or 0),
        }
        for row in rows
    }


def main(argv: list[str]) -> None:
    """`python3 -c "$(cat haproxy_runtime.py)" SOCKET PREFIX`: the servers of every model backend as JSON
    (how `fab status` reads a load balancer over SSH, with nothing installed there but Python)."""
    socket_path, prefix = argv
    print(json.dumps(pool(model_server_rows(RuntimeAPI(socket_path, prefix).ask("show stat"), prefix))))


if __name__ == "__main__":
    main(sys.argv[1:])
