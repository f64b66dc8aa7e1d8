"""SSH-reachable test hosts on this machine: one network namespace each, joined by a bridge, with a
real sshd in each. Made and removed by the test or benchmark that needs them.

Namespaces separate the network, not the filesystem, so each host gets its own path prefix for what
Ansible installs. A host can also get a mount namespace of its own, to look like another system (an
/etc/os-release of an unsupported release), to have a small disk (a tmpfs at its prefix), or to find
folders its image would bring, read-only (one copy on this machine for every host, as a golden image's
files are, and one copy in the page cache). A test can also connect from a host, as that host would
(`network_of`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# The pytest-xdist worker this process is (0 without workers): each worker's hosts get a bridge, a
# subnet and names of their own, so that two modules with hosts can run at once.
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
BRIDGE = f"mrtbr{WORKER}"
SUBNET = f"10.231.{WORKER}"
CLONE_NEWNET = 0x40000000  # <sched.h>; os.setns only exists from Python 3.12
_LIBC = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _LIBC.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def _veth(index: int) -> tuple[str, str]:
    """The names of the index-th host's link: its end on the bridge, its end in the host (at most 15
    characters)."""
    return f"mrt{WORKER}-{index}h", f"mrt{WORKER}-{index}n"


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


@dataclass
class TestHost:
    __test__ = False

    name: str
    address: str
    root: Path  # this host's files: prefix, sshd config and keys
    os_release: str | None = None  # contents bind-mounted over /etc/os-release
    debian_version: str | None = None
    small_disk: str | None = None  # tmpfs size mounted at the prefix, e.g. "2m"
    read_only: dict[Path, Path] = field(default_factory=dict)  # the host's path -> the folder it shows
    own: dict[Path, Path] = field(default_factory=dict)  # the host's path -> a file or folder of its own
    host_vars: dict = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return f"mrt{WORKER}-{self.name}"

    @property
    def prefix(self) -> Path:
        return self.root / "fs"


class TestHosts:
    __test__ = False  # a helper, not a test class

    """Namespaced hosts with sshd; use as a context manager."""

    def __init__(self, workdir: Path, hosts: list[TestHost]) -> None:
        self.workdir = workdir
        self.hosts = {h.name: h for h in hosts}
        self.client_key = workdir / "id_ed25519"
        self.known_hosts = workdir / "known_hosts"
        # Ansible's SSH connections to these hosts, kept open between tasks (ControlPersist): in a folder
        # of their own, so that a later set of hosts at the same addresses never reuses one, and they end
        # with the hosts.
        self.control_dir = workdir / "ssh-control"

    def __enter__(self) -> TestHosts:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- set up -----------------------------------------------------------------------------------
    def _start(self) -> None:
        self.stop()  # leftovers of an interrupted run
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.client_key))
        known = []
        for index, host in enumerate(self.hosts.values()):
            self._network(host, index)
            known.append(f"{host.address} {self._sshd(host)}")
        self.known_hosts.write_text("\n".join(known) + "\n")
        for host in self.hosts.values():
            self._wait_ssh(host)

    def _network(self, host: TestHost, index: int) -> None:
        outer, inner = _veth(index)
        _run("ip", "netns", "add", host.namespace)
        _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        _run("ip", "link", "set", outer, "master", BRIDGE)
        _run("ip", "link", "set", outer, "up")
        _run("ip", "link", "set", inner, "netns", host.namespace)
        exec_ns = ("ip", "netns", "exec", host.namespace)
        _run(*exec_ns, "ip", "addr", "add", f"{host.address}/24", "dev", inner)
        _run(*exec_ns, "ip", "link", "set", inner, "up")
        _run(*exec_ns, "ip", "link", "set", "lo", "up")

    def _sshd(self, host: TestHost) -> str:
        host.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        host.prefix.mkdir(mode=0o755, exist_ok=True)
        key = host.root / "ssh_host_ed25519_key"
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
        authorized = host.root / "authorized_keys"
        shutil.copy(f"{self.client_key}.pub", authorized)
        config = host.root / "sshd_config"
        config.write_text(
            f"ListenAddress {host.address}\nPort 22\nHostKey {key}\nPidFile {host.root}/sshd.pid\n"
            f"AuthorizedKeysFile {authorized}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\n"
        )
        sshd = f"/usr/sbin/sshd -f {config} -E {host.root}/sshd.log"
        script = self._mounts(host) + f"exec {sshd}"
        _run("ip", "netns", "exec", host.namespace, "unshare", "--mount", "--propagation", "private",
             "sh", "-c", script)  # fmt: skip
        kind, public = Path(f"{key}.pub").read_text().split()[:2]
        return f"{kind} {public}"

    @staticmethod
    def _mounts(host: TestHost) -> str:
        """Shell lines run in the host's own mount namespace before sshd starts there."""
        lines = []
        for target, content in (
            ("/etc/os-release", host.os_release),
            ("/etc/debian_version", host.debian_version),
        ):
            if content is not None:
                fake = host.root / Path(target).name
                fake.write_text(content)
                lines.append(f"mount --bind {fake} {target}")
        if host.small_disk:
            lines.append(f"mount -t tmpfs -o size={host.small_disk} tmpfs {host.prefix}")
        for target, source in host.read_only.items():
            lines += [f"mkdir -p {target}", f"mount --bind {source} {target}",
                      f"mount -o remount,bind,ro {target}"]  # fmt: skip
        for target, source in host.own.items():
            if not target.exists():
                continue  # nothing of this machine's to hide there
            if target.is_file():
                source.parent.mkdir(parents=True, exist_ok=True)
                source.touch()
            else:
                source.mkdir(parents=True, exist_ok=True)
            lines.append(f"mount --bind {source} {target}")
        return "".join(f"{line} && " for line in lines)

    def _wait_ssh(self, host: TestHost, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            probe = self.ssh(host.name, "true", check=False)
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                log = (host.root / "sshd.log").read_text() if (host.root / "sshd.log").exists() else ""
                raise RuntimeError(f"sshd on {host.name} not reachable: {probe.stderr}\n{log}")
            time.sleep(0.2)

    # --- use ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def network_of(self, name: str) -> Iterator[None]:
        """The calling thread joins a host's network namespace: the sockets it opens meanwhile are that
        host's (its address, its firewall), as a client on that host would connect."""
        with (
            open("/proc/thread-self/ns/net") as own,
            open(f"/run/netns/{self.hosts[name].namespace}") as host,
        ):
            _setns(host.fileno())
            try:
                yield
            finally:
                _setns(own.fileno())

    def ssh(self, name: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
        host = self.hosts[name]
        return subprocess.run(
            ["ssh", "-i", str(self.client_key), "-o", f"UserKnownHostsFile={self.known_hosts}",
             "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"root@{host.address}", command],
            capture_output=True, text=True, check=check, timeout=60,
        )  # fmt: skip

    def inventory(self, path: Path, groups: dict[str, list[str]], common: dict | None = None) -> Path:
        """An inventory of these hosts: each reached over SSH with its host key checked."""
        host_vars = {}
        for name in {n for members in groups.values() for n in members}:
            host = self.hosts[name]
            host_vars[name] = {
                "ansible_host": host.address,
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(self.client_key),
                "ansible_ssh_common_args": f"-o UserKnownHostsFile={self.known_hosts}",
                "ansible_control_path_dir": str(self.control_dir),
                "ansible_python_interpreter": "/usr/bin/python3",
                "fleet_prefix": str(host.prefix),
                **host.host_vars,
            }
        tree = {
            "all": {
                "vars": common or {},
                "children": {
                    group: {"hosts": {name: host_vars[name] for name in members}}
                    for group, members in groups.items()
                },
            }
        }
        path.write_text(yaml.safe_dump(tree, sort_keys=False))
        return path

    def remove_users(self, prefix: str) -> None:
        """Delete the users and groups the roles made for these hosts (named prefix + host name): the
        hosts share this machine's /etc/passwd, so they outlive the namespaces."""
        for name in self.hosts:
            _run("userdel", f"{prefix}{name}", check=False)
            _run("groupdel", f"{prefix}{name}", check=False)

    # --- tear down --------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Kill every process in each namespace, then remove the namespaces, their links and the bridge.
        (A namespace the kernel keeps a while after its last process, for its sockets' sake, would keep
        its link, and the name, for the next run: the link is deleted here, which deletes its peer.)"""
        for index, host in enumerate(self.hosts.values()):
            pids = _run("ip", "netns", "pids", host.namespace, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            if pids:
                time.sleep(0.2)
            _run("ip", "netns", "delete", host.namespace, check=False)
            _run("ip", "link", "delete", _veth(index)[0], check=False)
        _run("ip", "link", "delete", BRIDGE, check=False)
        _run("pkill", "-f", f"{self.control_dir}/", check=False)


def connects(address: str, port: int) -> bool:
    """Whether a TCP connection from here (this thread's network namespace) is accepted."""
    try:
        socket.create_connection((address, port), timeout=10).close()
    except ConnectionRefusedError:
        return False
    return True
