#!/usr/bin/python
"""Drive one server of an HAProxy backend through the runtime API (the admin stats socket)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: haproxy_server
short_description: Drain, enable or inspect one HAProxy backend server through the runtime API
description:
  - Talks to HAProxy's admin stats socket. Sets a server's administrative state (ready, drain,
    maint), waits until a drained server has no sessions left or until a server is UP by its health
    check, and saves every server's state to the server-state-file so that a reload keeps it.
  - Runs on the load balancer host (delegate_to it). Honours check mode.
options:
  socket:
    description: Path of HAProxy's admin stats socket.
    type: path
    required: true
  backend:
    description: Backend name.
    type: str
  server:
    description: Server name within the backend.
    type: str
  state:
    description: Wanted administrative state; C(present) changes nothing and only reports.
    type: str
    choices: [ready, drain, maint, present]
    default: present
  wait_idle:
    description: After draining, wait until the server's current sessions reach zero.
    type: bool
    default: false
  wait_up:
    description: Wait until the health check reports the server UP.
    type: bool
    default: false
  timeout:
    description: Seconds to wait for I(wait_idle) or I(wait_up).
    type: int
    default: 300
  save_state_to:
    description: Write C(show servers state) to this file (the server-state-file) and do nothing else.
    type: path
author: model-runtime
"""

EXAMPLES = r"""
- name: Drain replica-1 and wait for its sessions to end
  haproxy_server:
    socket: /run/haproxy/admin.sock
    backend: model_runtime
    server: replica-1
    state: drain
    wait_idle: true
"""

RETURN = r"""
status:
  description: The server's status from C(show stat) (UP, DOWN, DRAIN, MAINT, ...).
  type: str
  returned: when a server is named
sessions:
  description: The server's current sessions.
  type: int
  returned: when a server is named
"""

import csv
import io
import os
import socket
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule

ADMIN_STATES = {"ready": "ready", "drain": "drain", "maint": "maint"}


def ask(path: str, command: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(path)
        conn.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def server_stat(path: str, backend: str, server: str) -> dict | None:
    text = ask(path, "show stat").lstrip("# ")
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("pxname") == backend and row.get("svname") == server:
            return row
    return None


# srv_admin_state bits in `show servers state` (HAProxy's SRV_ADMF_*): forced/inherited/... maintenance
# and forced/inherited drain.
MAINT_BITS = 0x01 | 0x02 | 0x04 | 0x20 | 0x40
DRAIN_BITS = 0x08 | 0x10


def admin_state(path: str, backend: str, server: str) -> str:
    """ready, drain or maint as set through the runtime API. Not from `show stat`'s status column:
    a drained server whose health check fails shows DOWN there, and would pass for ready."""
    lines = ask(path, f"show servers state {backend}").splitlines()
    header = next(line for line in lines if line.startswith("#")).lstrip("# ").split()
    for line in lines:
        fields = line.split()
        if len(fields) >= len(header) and not line.startswith("#"):
            row = dict(zip(header, fields, strict=False))
            if row["srv_name"] == server:
                admin = int(row["srv_admin_state"])
                return "maint" if admin & MAINT_BITS else "drain" if admin & DRAIN_BITS else "ready"
    raise KeyError(f"{backend}/{server}")


def save_state(module: AnsibleModule, path: str, target: str) -> None:
    state = ask(path, "show servers state")
    if not module.check_mode:
        folder = os.path.dirname(target) or "."
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".haproxy-state.")
        with os.fdopen(fd, "w") as handle:
            handle.write(state)
        os.chmod(tmp, 0o640)
        os.replace(tmp, target)
    module.exit_json(changed=False, saved=target)


def wait_for(module: AnsibleModule, path: str, backend: str, server: str, done: callable, what: str) -> dict:
    deadline = time.monotonic() + module.params["timeout"]
    while True:
        row = server_stat(path, backend, server)
        if row is not None and done(row):
            return row
        if time.monotonic() > deadline:
            status = row["status"] if row else "absent"
            sessions = row["scur"] if row else "?"
            module.fail_json(
                msg=f"{backend}/{server} not {what} after {module.params['timeout']}s "
                f"(status {status}, {sessions} sessions)"
            )
        time.sleep(0.5)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "socket": {"type": "path", "required": True},
            "backend": {"type": "str"},
            "server": {"type": "str"},
            "state": {"type": "str", "choices": ["ready", "drain", "maint", "present"], "default": "present"},
            "wait_idle": {"type": "bool", "default": False},
            "wait_up": {"type": "bool", "default": False},
            "timeout": {"type": "int", "default": 300},
            "save_state_to": {"type": "path"},
        },
        required_one_of=[["server", "save_state_to"]],
        required_together=[["backend", "server"]],
        supports_check_mode=True,
    )
    path = module.params["socket"]
    try:
        if module.params["save_state_to"]:
            save_state(module, path, module.params["save_state_to"])
        backend, server = module.params["backend"], module.params["server"]
        row = server_stat(path, backend, server)
        if row is None:
            module.fail_json(msg=f"HAProxy has no server {backend}/{server}")
        wanted = module.params["state"]
        changed = False
        if wanted != "present" and admin_state(path, backend, server) != wanted:
            changed = True
            if not module.check_mode:
                reply = ask(path, f"set server {backend}/{server} state {ADMIN_STATES[wanted]}").strip()
                if reply:
                    module.fail_json(msg=f"HAProxy refused: {reply}")
        if not module.check_mode:
            if module.params["wait_idle"]:
                row = wait_for(module, path, backend, server, lambda r: int(r["scur"] or 0) == 0, "idle")
            if module.params["wait_up"]:
                row = wait_for(module, path, backend, server, lambda r: r["status"].startswith("UP"), "UP")
            row = server_stat(path, backend, server) or row
    except OSError as exc:
        module.fail_json(msg=f"cannot talk to HAProxy at {path}: {exc}")
    module.exit_json(changed=changed, status=row["status"], sessions=int(row["scur"] or 0))


if __name__ == "__main__":
    main()
