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

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.haproxy_runtime import HAProxyError, RuntimeAPI


def save_state(module: AnsibleModule, api: RuntimeAPI, target: str) -> None:
    state = api.ask("show servers state")
    if not module.check_mode:
        folder = os.path.dirname(target) or "."
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".haproxy-state.")
        with os.fdopen(fd, "w") as handle:
            handle.write(state)
        os.chmod(tmp, 0o640)
        os.replace(tmp, target)
    module.exit_json(changed=False, saved=target)


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
    params = module.params
    api = RuntimeAPI(params["socket"], params["backend"])
    server, wanted = params["server"], params["state"]
    try:
        if params["save_state_to"]:
            save_state(module, api, params["save_state_to"])
        row = api.server(server)
        changed = wanted != "present" and api.admin_state(server) != wanted
        if changed and not module.check_mode:
            api.set_state(server, wanted)
        if not module.check_mode:
            if params["wait_idle"]:
                api.wait_idle(server, params["timeout"])
            if params["wait_up"]:
                api.wait_up(server, params["timeout"])
            row = api.server(server)
    except HAProxyError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"cannot talk to HAProxy at {params['socket']}: {exc}")
    module.exit_json(changed=changed, status=row["status"], sessions=int(row["scur"] or 0))


if __name__ == "__main__":
    main()
