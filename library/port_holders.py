#!/usr/bin/python
"""Fail when a TCP port is held by a process other than the service expected there (a preflight check)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: port_holders
short_description: Fail when a TCP port is taken by a process other than the one expected
description:
  - Reads the host's listening TCP sockets (/proc/net/tcp and tcp6, in the host's network namespace),
    finds the processes that hold each of I(ports) (their open sockets under /proc/PID/fd), and fails
    naming every port held by a process whose command line does not contain that port's I(owner).
    A free port passes, and so does one held by its owner (our own service, on a re-run).
  - One task for any number of ports (a host's instances have two each). Changes nothing.
options:
  ports:
    description: >-
      The ports, each {port, owner}; owner is text its holder's command line contains when the port
      is ours ("" when it must be free).
    type: list
    elements: dict
    required: true
author: model-runtime
"""

EXAMPLES = r"""
- name: Check that HAProxy's ports are free or already its own
  port_holders:
    ports:
      - {port: 8443, owner: /etc/haproxy/haproxy.cfg}
      - {port: 8404, owner: /etc/haproxy/haproxy.cfg}
"""

RETURN = r"""
holders:
  description: Each held port (as text) and the command lines of the processes holding it.
  type: dict
  returned: always
"""

from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

LISTEN = "0A"  # the socket state in /proc/net/tcp


def listening(
    ports: set[int], tables: tuple[str, ...] = ("/proc/net/tcp", "/proc/net/tcp6")
) -> dict[int, set[str]]:
    """Port -> the inodes of the sockets listening on it, for the ports asked about."""
    found: dict[int, set[str]] = {}
    for table in tables:
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue  # no IPv6 here
        for row in rows:
            fields = row.split()
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if fields[3] == LISTEN and port in ports:
                found.setdefault(port, set()).add(fields[9])
    return found


def socket_owners(inodes: set[str], proc: Path = Path("/proc")) -> dict[str, set[int]]:
    """Socket inode -> the processes that have it open (those this user may look into)."""
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    owners: dict[str, set[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            descriptors = list((entry / "fd").iterdir())
        except OSError:
            continue  # ended meanwhile, or another user's
        for descriptor in descriptors:
            try:
                target = str(descriptor.readlink())
            except OSError:
                continue  # closed meanwhile
            if target in wanted:
                owners.setdefault(wanted[target], set()).add(int(entry.name))
    return owners


def command_line(pid: int) -> str:
    try:
        return (
            (Path("/proc") / str(pid) / "cmdline")
            .read_bytes()
            .replace(b"\0", b" ")
            .decode(errors="replace")
            .strip()
        )
    except OSError:
        return f"(process {pid}, ended)"


def main() -> None:
    module = AnsibleModule(
        argument_spec={"ports": {"type": "list", "elements": "dict", "required": True}},
        supports_check_mode=True,
    )
    wanted = {int(entry["port"]): str(entry.get("owner") or "") for entry in module.params["ports"]}
    sockets = listening(set(wanted))
    owners = socket_owners({inode for inodes in sockets.values() for inode in inodes})
    holders = {
        port: sorted(
            {command_line(pid) for inode in inodes for pid in owners.get(inode, ())}
            or {"(a process not visible to this user)"}
        )
        for port, inodes in sockets.items()
    }
    taken = [
        f"port {port} is taken by another program: {'; '.join(lines)[:200]}"
        for port, lines in sorted(holders.items())
        if not wanted[port] or not any(wanted[port] in line for line in lines)
    ]
    result = {"changed": False, "holders": {str(port): lines for port, lines in holders.items()}}
    if taken:
        module.fail_json(msg=", ".join(taken), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
