#!/usr/bin/python
"""Wait until a model-runtime instance answers ready, failing early (with its log) if it died."""

from __future__ import annotations

DOCUMENTATION = r"""
module: runtime_ready
short_description: Wait for a model-runtime instance's /health/ready, or report why it never came up
description:
  - Polls the instance's readiness URL until it answers 200. Between polls it asks the service
    manager whether the instance is still alive; an instance that has stopped for good (supervisord's
    FATAL, systemd's failed) or that keeps dying and being restarted (a crash loop: its process ID
    changed I(restarts) times) ends the wait at once, with the end of its log in the message, instead
    of after the whole timeout.
options:
  url:
    description: The readiness URL, e.g. http://127.0.0.1:8101/health/ready.
    type: str
    required: true
  ca_file:
    description: For an https URL, the only CA the instance's certificate may be signed by.
    type: path
  timeout:
    description: Seconds to wait.
    type: int
    default: 600
  status_command:
    description:
      - A command whose output says whether the service gave up (see I(dead_words)) and its process
        ID (supervisorctl's C(pid N), or a line holding only the number, as systemctl's C(MainPID)).
    type: list
    elements: str
  restarts:
    description:
      - How many times the process may be replaced while waiting before it counts as a crash loop.
      - One by default, because a release whose process died before it was ever ready is broken, and
        waiting for more attempts only delays putting the previous release back.
    type: int
    default: 1
  dead_words:
    description: Words in the status command's output that mean the instance is dead for good.
    type: list
    elements: str
    default: [FATAL, failed]
  log_file:
    description: The instance's log; its end goes into the failure message.
    type: path
author: model-runtime
"""

RETURN = r"""
seconds:
  description: Seconds until the instance was ready.
  type: float
  returned: success
"""

import re
import ssl
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.readiness import NotReady, wait_ready


class InstanceDied(Exception):
    """The service manager says the instance will not come up."""


def tail(path: str | None, lines: int = 15) -> str:
    if not path:
        return ""
    try:
        with open(path, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return ""


def process_id(status: str) -> int | None:
    found = re.search(r"\bpid (\d+)|^(\d+)$", status, re.MULTILINE)
    pid = int(found.group(1) or found.group(2)) if found else 0
    return pid or None


class ServiceWatch:
    """Between two probes: asks the service manager whether the instance gave up or keeps dying."""

    def __init__(self, command: list[str], dead_words: list[str], restarts: int) -> None:
        self.command, self.dead_words, self.restarts = command, dead_words, restarts
        self.started = time.monotonic()
        self.processes: list[int] = []

    def __call__(self) -> None:
        status = subprocess.run(self.command, capture_output=True, text=True, check=False)
        said = status.stdout + status.stderr
        if any(word in said for word in self.dead_words):
            raise InstanceDied(f"the instance stopped for good: {said.strip()}")
        pid = process_id(said)
        if pid and pid not in self.processes:
            self.processes.append(pid)
        if len(self.processes) > self.restarts:
            raise InstanceDied(
                f"the instance keeps dying (crash loop: processes {self.processes} in "
                f"{time.monotonic() - self.started:.0f}s)"
            )


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "timeout": {"type": "int", "default": 600},
            "status_command": {"type": "list", "elements": "str"},
            "dead_words": {"type": "list", "elements": "str", "default": ["FATAL", "failed"]},
            "restarts": {"type": "int", "default": 1},
            "log_file": {"type": "path"},
            "ca_file": {"type": "path"},
        },
        supports_check_mode=True,
    )
    if module.check_mode:
        module.exit_json(changed=False, skipped=True)
    params = module.params
    tls = ssl.create_default_context(cafile=params["ca_file"]) if params["ca_file"] else None
    watch = (
        ServiceWatch(params["status_command"], params["dead_words"], params["restarts"])
        if params["status_command"]
        else None
    )
    try:
        seconds = wait_ready(params["url"], params["timeout"], tls, between=watch)
    except (NotReady, InstanceDied) as exc:
        module.fail_json(msg=f"{exc}\n{tail(params['log_file'])}")
    module.exit_json(changed=False, seconds=round(seconds, 1))


if __name__ == "__main__":
    main()
