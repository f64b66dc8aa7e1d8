"""The embedded default fleet (inventories/local) under a prefix of its own, on free ports, with a
second runtime release and model versions to roll to: shared by the local fleet tests, bench/upgrade.py
and bench/soak.py."""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from filter_plugins.models import instance_models, model_entries
from fleet_ops.inventory import FleetHost, load_fleet
from fleet_ops.prometheus import Prometheus
from harness import REPO
from harness.load import Load, completions
from harness.playbooks import PlaybookRun, ensure_wheelhouse, playbook, release_wheelhouse
from harness.server import free_port
from model_runtime.readiness import answer, ready_url
from module_utils.haproxy_runtime import model_server_rows

LOCAL = REPO / "inventories" / "local"
KEY = "local-fleet-test-key"
# The local inventory serves two models (demo, and its int8 copy demo-int8); a fleet of the demo model
# alone, as most tests and benchmarks want, says so with this.
DEMO_ONLY = [{"name": "demo"}]
# What HAProxy says of the last health check of a server (columns of its stats CSV).
CHECK_COLUMNS = ("check_status", "check_code", "last_chk")
# During playbook runs each load client waits this long between two requests (about 10 requests a
# second from 4 clients): steady traffic that leaves a 2-core runner room for the playbook and the
# restarting replicas, as a production fleet's spare capacity would, rather than a saturation.
LOAD_PAUSE_S = 0.25


def consecutive_free_ports(count: int) -> int:
    while True:
        base = free_port()
        if base + count < 65535 and all(_is_free(base + i) for i in range(1, count)):
            return base


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def running_under(prefix: Path) -> list[str]:
    listing = subprocess.run(
        ["ps", "-eo", "pid,stat,args"], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in listing.splitlines() if str(prefix) in line and " Z" not in line]


def model_copy(
    source: Path, target: Path, version: str, break_weights: bool = False, name: str = "demo"
) -> Path:
    """The demo model as another version (optionally with weights that cannot load, yet a consistent
    manifest: the kind of release that installs fine and never becomes ready)."""
    shutil.copytree(source, target)
    (target / "manifest.json").unlink()
    if break_weights:
        weights = target / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    subprocess.run(
        [sys.executable, "-m", "model_runtime", "manifest", str(target), "--name", name,
         "--version", version],
        check=True, capture_output=True,
    )  # fmt: skip
    return target


@dataclass
class LocalFleet:
    """A fleet behind HAProxy on this machine, everything under root: `instances` replicas of each model
    whose entry does not say how many (models: model_runtime_models; None: the inventory's own)."""

    root: Path
    demo_model: Path
    instances: int = 3
    runtime_settings: dict | None = None  # model_runtime_settings (the runtime's own settings)
    models: list[dict] | None = None

    def __post_init__(self) -> None:
        wheelhouse = ensure_wheelhouse()
        self.prefix = self.root / "fs"
        newer, self.new_runtime = release_wheelhouse(self.root / "wheelhouse-next", "next")
        listed = self.models if self.models is not None else self.inventory_host.vars["model_runtime_models"]
        single = {"model_runtime_instances": self.instances, "model_runtime_model_name": "demo"}
        # Instance number (text) -> its model, as the roles number them.
        self.instance_models = instance_models(model_entries(listed, single))
        total = len(self.instance_models)
        ports = consecutive_free_ports(2 * total)  # the API ports, then the internal listeners'
        self.settings = {
            "fleet_prefix": str(self.prefix),
            "model_runtime_instances": self.instances,
            "model_runtime_base_port": ports,
            "model_runtime_metrics_base_port": ports + total,
            "loadbalancer_port": free_port(),
            "loadbalancer_stats_port": free_port(),
            "monitoring_prometheus_port": free_port(),
            "monitoring_alertmanager_port": free_port(),
            "monitoring_scrape_interval": "2s",
            "monitoring_evaluation_interval": "2s",
            "exporters_node_port": free_port(),
            "autoscaler_metrics_port": free_port(),  # not a role variable: LocalFleet.autoscaler passes it
            "model_runtime_api_keys": [KEY],
            "model_runtime_ready_timeout_s": 180,
            "model_runtime_pip_args": f"--no-index --find-links {wheelhouse} --find-links {newer}",
        }
        if self.runtime_settings:
            self.settings["model_runtime_settings"] = self.runtime_settings
        if self.models is not None:
            self.settings["model_runtime_models"] = self.models
        self.old_runtime = (wheelhouse / "RUNTIME_VERSION").read_text().strip()
        self.old_model = json.loads((self.demo_model / "manifest.json").read_text())["version"]

    @functools.cached_property
    def inventory_host(self) -> FleetHost:
        """The local inventory's one host (GPU server and load balancer) as a play sees it, for the names
        the roles give things: its instances' services, the balancer's backend."""
        return load_fleet(LOCAL)["localhost"]

    def model_version(self, version: str, break_weights: bool = False, name: str = "demo") -> Path:
        """A copy of the demo model as `version` of the model `name`."""
        return model_copy(self.demo_model, self.root / f"{name}-{version}", version, break_weights, name)

    def run(
        self, name: str, extra: dict | None = None, *args: str, env: dict[str, str] | None = None
    ) -> PlaybookRun:
        return playbook(name, LOCAL, {**self.settings, **(extra or {})}, *args, env=env)

    @property
    def url(self) -> str:
        """HAProxy terminates TLS with the certificate of the fleet's own CA (loadbalancer role)."""
        return f"https://127.0.0.1:{self.settings['loadbalancer_port']}"

    def tls(self) -> ssl.SSLContext:
        """A client context that trusts the fleet's CA and nothing else."""
        return ssl.create_default_context(cafile=self.prefix / "etc/haproxy/tls/ca.pem")

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.tls())

    def load(self, clients: int = 4, pause_s: float = 0.0, model: str = "demo") -> Load:
        """Completions of model through HAProxy, plain and streamed in turn, until stopped (a context
        manager)."""
        return Load(self.url, completions(model), clients, KEY, self.tls(), pause_s)

    def replica_pids(self) -> dict[str, int]:
        """Each instance's server process (supervisord's program), by instance name."""
        pids = {}
        for i in range(1, len(self.instance_models) + 1):
            pid = self.supervisorctl("pid", self.inventory_host.service(i))
            if pid.isdigit() and pid != "0":
                pids[f"localhost-{i}"] = int(pid)
        return pids

    def answered_by(self, request_ids: set[str]) -> set[str]:
        """The instances (numbers, as text) whose logs show these requests (each logs the id HAProxy
        gave the request)."""
        logs = self.prefix / "var/log/model-runtime"
        return {
            i
            for i in self.instance_models
            if any(
                rid in (logs / f"{self.inventory_host.service(int(i))}.log").read_text()
                for rid in request_ids
            )
        }

    @property
    def prometheus(self) -> Prometheus:
        """The fleet's Prometheus (the monitoring role, on loopback)."""
        return Prometheus(f"http://127.0.0.1:{self.settings['monitoring_prometheus_port']}")

    def scrape_targets(self, job: str) -> set[str]:
        """The addresses Prometheus scrapes for `job` now (from the targets files the roles wrote)."""
        return {t.address for t in self.prometheus.targets() if t.job == job}

    def metrics_address(self, instance: int) -> str:
        return f"127.0.0.1:{self.settings['model_runtime_metrics_base_port'] + instance - 1}"

    def replica_metrics(self, instance: int) -> str:
        """The instance's /metrics, from its internal listener (which HAProxy does not forward to)."""
        return httpx.get(f"http://{self.metrics_address(instance)}/metrics", timeout=10).text

    def replica_readiness(self, instance: int) -> str | None:
        """The instance's own /health/ready status ("ready", "stalled", ...), asked directly (not through
        HAProxy); None when it does not answer."""
        port = self.settings["model_runtime_base_port"] + instance - 1
        try:
            _, body = answer(ready_url(f"http://127.0.0.1:{port}"), timeout_s=5)
        except OSError:
            return None
        return json.loads(body)["status"]

    def replica_ready(self, instance: int) -> bool:
        return self.replica_readiness(instance) == "ready"

    def run_under_load(self, name: str, extra: dict | None = None) -> tuple[PlaybookRun, Load]:
        """A playbook run with constant client load through HAProxy before, during and after it."""
        run, loads = self.run_under_loads(name, extra, ["demo"])
        return run, loads["demo"]

    def run_under_loads(
        self, name: str, extra: dict | None, models: list[str]
    ) -> tuple[PlaybookRun, dict[str, Load]]:
        """A playbook run with constant client load of each model through HAProxy before, during and
        after it (each model's clients wait longer between requests, so that the total stays that of
        one model's)."""
        with contextlib.ExitStack() as loads:
            traffic = {
                model: loads.enter_context(self.load(pause_s=LOAD_PAUSE_S * len(models), model=model))
                for model in models
            }
            for load in traffic.values():
                load.wait_for(20)
            run = self.run(name, extra)
            for load in traffic.values():
                load.wait_for(len(load.outcomes) + 20)
        return run, traffic

    def record(self) -> dict:
        return json.loads((self.prefix / "etc/ansible/facts.d/model_runtime.fact").read_text())

    def releases(self) -> dict[str, tuple[str, str, str]]:
        return {
            i: (e["runtime_version"], e["model_version"], e["state"])
            for i, e in self.record()["instances"].items()
        }

    def server_states(self) -> dict[str, str]:
        """HAProxy's view: server name -> UP / DRAIN / MAINT / DOWN. A server between states reads
        "UP 1/2" (one check failed, still in rotation) or "DOWN 1/2": only the state itself counts."""
        return {name: status.split()[0] for name, (status, _) in self.server_checks().items()}

    def server_checks(self) -> dict[str, tuple[str, str]]:
        """Server name -> (HAProxy's status with its transition count, the last check's result), over the
        backends of every model."""
        csv = httpx.get(f"http://127.0.0.1:{self.settings['loadbalancer_stats_port']}/stats;csv").text
        return {
            row["svname"]: (row["status"], " ".join(row[k] for k in CHECK_COLUMNS))
            for row in model_server_rows(csv, self.inventory_host.vars["loadbalancer_backend_name"])
        }

    def supervisorctl(self, *args: str) -> str:
        command = [str(self.prefix / "opt/model-runtime/supervisor/bin/supervisorctl"), "-c",
                   str(self.prefix / "etc/model-runtime/supervisor/supervisord.conf"), *args]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()

    def settings_file(self) -> Path:
        """The fleet's settings as a private file, for runs started outside `run` (the runner, cron, the
        autoscaler): `-e @FILE` keeps them, the API key among them, off command lines and logs."""
        settings = self.root / "fleet-vars.json"
        settings.touch(mode=0o600)
        settings.write_text(json.dumps(self.settings))
        return settings

    def serving(self, model: str) -> int:
        """How many of the model's instances the release record says serve (the rest a scale run took
        out)."""
        releases = self.releases()
        mine = [i for i, name in self.instance_models.items() if name == model]
        return sum(1 for i in mine if releases[i][2] == "serving")

    def autoscaler(
        self,
        enabled: bool,
        policy: dict,
        interval_s: float = 2,
        window_s: int = 10,
        model: str = "",
        burst: dict | None = None,
        environment: dict | None = None,
    ) -> PlaybookRun:
        """control.yml with the autoscaler on (these rules, a reading every interval_s averaged over
        window_s, for the model named: "" in a fleet of one; a burst group when given, with the
        environment that says where its AWS credentials are) or off. Its runs get the fleet's settings
        from a private file: its path, not the settings (the API key among them), goes on their command
        line and into the runner's log."""
        settings = self.settings_file()
        return self.run("control.yml", {
            "control_node_autoscaler_burst": burst or {},
            "control_node_autoscaler_environment": environment or {},
            "control_node_autoscaler_enabled": enabled,
            "control_node_autoscaler_policy": policy,
            "control_node_autoscaler_model": model,
            "control_node_autoscaler_prometheus": self.prometheus.url,
            "control_node_autoscaler_interval_s": interval_s,
            "control_node_autoscaler_window_s": window_s,
            "control_node_autoscaler_metrics_port": self.settings["autoscaler_metrics_port"],
            "control_node_autoscaler_playbook_args": ["-e", f"@{settings}"],
        })  # fmt: skip

    def autoscaler_decisions(self) -> list[dict]:
        """Every decision the autoscaler logged, with its time (one JSON object a line after the log's
        time and level)."""
        log = self.prefix / "var/log/model-runtime/fleet-autoscaler.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [
            {**json.loads(line[line.index("{") :]), "logged": line[:19]}
            for line in lines
            if '{"decision"' in line
        ]

    def stop(self) -> PlaybookRun:
        return self.run("stop.yml")
