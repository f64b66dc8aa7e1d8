"""Fleets of SSH hosts on this machine (network namespaces, harness.netns), set up as a real inventory
sets up a bare-metal fleet: what its group_vars say (`fleet_vars`, shared with the two-host bare-metal
tests), and `HostFleet`, a dozen serving hosts behind a load balancer host of their own, shared by the
fleet-scale tests and bench/fleet.py.

Each serving host is lean: one instance of the demo model, and the host's torch build from a golden
image (`golden_torch`): one environment built once on this machine and shown read-only to every host at
the path the model_runtime role installs it to, where the role finds it complete and installs nothing,
as on a host whose image brings it. Everything else (the release venvs, the model, HAProxy, the
certificates, the firewall) each host gets from the roles."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from filter_plugins.environments import environment_folder
from harness import REPO
from harness.cache import CACHE, one_builder
from harness.load import Load, completions
from harness.netns import SUBNET, WORKER, TestHost, TestHosts
from harness.playbooks import PlaybookRun, ensure_wheelhouse, playbook, release_wheelhouse, role_defaults
from module_utils.haproxy_runtime import model_server_rows

RUNTIME, BALANCER = role_defaults("model_runtime"), role_defaults("loadbalancer")
TORCH_LOCK = REPO / "requirements" / "torch-cpu.lock"
# Where the model_runtime role installs, under a host's prefix.
INSTALL_DIR = RUNTIME["model_runtime_install_dir"].removeprefix("{{ model_runtime_prefix }}/")
PYTHON = "/usr/bin/python3"  # the hosts' (the role's default model_runtime_python)


def offline(wheelhouse: Path, *more: Path) -> str:
    """pip's options for installing from these folders only."""
    return f"--no-index --find-links {wheelhouse}" + "".join(f" --find-links {w}" for w in more)


def fleet_vars(hosts: TestHosts, key: str, wheelhouse: Path, model: Path, *more_wheelhouses: Path) -> dict:
    """What a real inventory's group_vars would say, with every path under each host's prefix and the
    fleet CA in the control node's own folder."""
    pip_args = offline(wheelhouse, *more_wheelhouses)
    return {
        "model_artifacts_prefix": "{{ fleet_prefix }}",
        "model_artifacts_name": "demo",
        "model_artifacts_source": str(model),
        "model_artifacts_group": "{{ model_runtime_group }}",
        "model_runtime_prefix": "{{ fleet_prefix }}",
        "model_runtime_version": (wheelhouse / "RUNTIME_VERSION").read_text().strip(),
        "model_runtime_pip_args": pip_args,
        # torch comes from the fleet's wheelhouse alone: its environment's folder (named after the lock
        # and these options) stays the same when a release's wheelhouse is added.
        "model_runtime_torch_pip_args": offline(wheelhouse),
        "model_runtime_service_manager": "supervisord",
        # Per-host users: the hosts share /etc/passwd, and users are created concurrently.
        "model_runtime_user": "mrt-{{ inventory_hostname }}",
        "model_runtime_group": "mrt-{{ inventory_hostname }}",
        "model_runtime_listen_address": "{{ ansible_host }}",
        "model_runtime_tls": True,
        "model_runtime_api_keys": [key],
        "model_runtime_shutdown_grace_s": 5,
        "loadbalancer_prefix": "{{ fleet_prefix }}",
        "loadbalancer_service_manager": "supervisord",
        "loadbalancer_bind_address": "{{ ansible_host }}",
        "loadbalancer_tls_self_signed": True,
        "loadbalancer_tls_names": ["{{ ansible_host }}"],
        "loadbalancer_pip_args": pip_args,
        "firewall_enabled": True,
        "firewall_prefix": "{{ fleet_prefix }}",
        "fleet_ca_dir": str(hosts.workdir / "fleet-ca"),
    }


def golden_torch(wheelhouse: Path) -> tuple[str, Path]:
    """The hosts' torch build as an image would bring it: (the folder name the model_runtime role gives
    it, the environment on this machine). Installed from the wheelhouse by the lock the role installs,
    then byte-compiled whole (the hosts see it read-only, so that no instance could write bytecode)."""
    requirement = TORCH_LOCK.read_text().rstrip()  # as the role reads it (Ansible's file lookup)
    name = environment_folder(requirement, offline(wheelhouse), "torch")
    folder = CACHE / "fleet-torch" / name
    with one_builder("fleet-torch"):
        if not (folder / ".complete").exists():
            shutil.rmtree(folder, ignore_errors=True)
            subprocess.run([PYTHON, "-m", "venv", str(folder)], check=True)
            subprocess.run(
                [str(folder / "bin" / "pip"), "install", "--quiet", "--require-hashes", "--no-deps",
                 "--no-compile", *offline(wheelhouse).split(), "-r", str(TORCH_LOCK)],
                check=True, capture_output=True,
            )  # fmt: skip
            subprocess.run(
                [str(folder / "bin" / "python"), "-m", "compileall", "-q", "-j", "0", str(folder / "lib")],
                check=False,  # a test file of some dependency that does not compile is no reason to stop
                stdout=subprocess.DEVNULL,
            )
            (folder / ".complete").touch()
    return name, folder


@dataclass
class HostFleet:
    """`size` serving hosts (h01, h02, ...: gpu_servers, one demo instance each) and a load balancer
    host (lb), over SSH, set up by site.yml; with a second runtime release to roll to. A context manager:
    every host, with every process it runs, is gone after it."""

    demo_model: Path
    size: int = 12
    key: str = "host-fleet-test-key"
    hosts: TestHosts = field(init=False)

    def __post_init__(self) -> None:
        # Not pytest's tmp_path: the hosts' service users must be able to reach their files (0755).
        self.root = Path(tempfile.mkdtemp(prefix="mrt-host-fleet-"))
        self.root.chmod(0o755)
        self.wheelhouse = ensure_wheelhouse()
        torch_name, torch = golden_torch(self.wheelhouse)
        # Named per pytest-xdist worker past the first, as their namespaces are: the hosts' service users
        # (named after them) share this machine's /etc/passwd.
        self.names = [f"{'' if WORKER == 0 else f'w{WORKER}'}h{i:02d}" for i in range(1, self.size + 1)]
        made = [TestHost("lb", f"{SUBNET}.10", self.root / "lb")]
        for i, name in enumerate(self.names, start=1):
            root = self.root / name
            installs = root / "fs" / INSTALL_DIR
            image = {installs / "torch" / torch_name: torch}
            made.append(TestHost(name, f"{SUBNET}.{10 + i}", root, read_only=image))
        # The last host can be given a (stand-in) GPU driver: apt there sees only the sources a test names
        # (this machine's would be out of its network's reach) and keeps its own package lists.
        self.gpu_host, self.gpu_apt_sources = self.names[-1], self.root / self.names[-1] / "apt-sources"
        made[-1].own = {
            Path("/etc/apt/sources.list.d"): self.gpu_apt_sources,
            Path("/etc/apt/sources.list"): self.root / self.gpu_host / "apt-sources.list",
            Path("/var/lib/apt/lists"): self.root / self.gpu_host / "apt-lists",
        }
        (self.root / self.gpu_host / "apt-lists" / "partial").mkdir(parents=True)
        self.hosts = TestHosts(self.root, made)
        self.balancer = self.hosts.hosts["lb"].address
        self.old_runtime = (self.wheelhouse / "RUNTIME_VERSION").read_text().strip()
        self.old_model = json.loads((self.demo_model / "manifest.json").read_text())["version"]
        self.next_wheelhouse, self.new_runtime = release_wheelhouse(self.root / "wheelhouse-next", "next")

    def __enter__(self) -> HostFleet:
        try:
            self.hosts.__enter__()
            (self.root / "inventory").mkdir()  # its own folder: the fleet's lock lies beside it
            self.inventory = self.hosts.inventory(
                self.root / "inventory" / "hosts.yml",
                {"gpu_servers": self.names, "loadbalancers": ["lb"]},
                fleet_vars(self.hosts, self.key, self.wheelhouse, self.demo_model, self.next_wheelhouse),
            )
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.hosts.stop()
        self.hosts.remove_users("mrt-")  # fleet_vars' model_runtime_user
        shutil.rmtree(self.root, ignore_errors=True)

    # --- runs -----------------------------------------------------------------------------------------
    def run(self, name: str, extra: dict | None = None, *args: str, inventory: Path | None = None,
            env: dict[str, str] | None = None) -> PlaybookRun:  # fmt: skip
        return playbook(name, inventory or self.inventory, extra, *args, env=env, timeout=3600)

    @property
    def url(self) -> str:
        return f"https://{self.balancer}:{BALANCER['loadbalancer_port']}"

    def load(self, clients: int = 4, pause_s: float = 0.25) -> Load:
        """Completions through the load balancer, plain and streamed in turn, until stopped (a context
        manager), over TLS that trusts the fleet CA alone."""
        tls = ssl.create_default_context(cafile=self.root / "fleet-ca" / "ca.pem")
        return Load(self.url, completions("demo"), clients, self.key, tls, pause_s)

    # --- state ----------------------------------------------------------------------------------------
    def record(self, name: str) -> dict:
        """The host's release record (what the roles wrote of its instances)."""
        fact = self.hosts.hosts[name].prefix / "etc/ansible/facts.d/model_runtime.fact"
        return json.loads(fact.read_text())

    def log_dir(self, name: str) -> Path:
        """Where the host's supervisord and instances log."""
        return self.hosts.hosts[name].prefix / "var/log/model-runtime"

    def releases(self) -> dict[str, tuple[str, str, str, str]]:
        """Host -> its instance's (runtime version, model version, state, run that put it there)."""
        releases = {}
        for name in self.names:
            entry = self.record(name)["instances"]["1"]
            releases[name] = (entry["runtime_version"], entry["model_version"], entry["state"], entry["run"])
        return releases

    def server_states(self) -> dict[str, str]:
        """The load balancer's view: server name (h01-1, ...) -> UP / DRAIN / MAINT / DOWN."""
        with self.hosts.network_of("lb"):
            csv = httpx.get(f"http://127.0.0.1:{BALANCER['loadbalancer_stats_port']}/stats;csv").text
        backend = BALANCER["loadbalancer_backend_name"]
        return {row["svname"]: row["status"].split()[0] for row in model_server_rows(csv, backend)}
