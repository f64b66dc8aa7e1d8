"""Day-2 operations over SSH: `fab -l` lists them. Hosts come from the Ansible inventory (--inventory,
default inventories/local), with the variables a play would see; SSH host keys are checked against the
inventory's known_hosts (or ~/.ssh/known_hosts), and an unknown host is refused.

  fab status [--json]                 the fleet table (what each instance runs, what differs)
  fab logs [--host H] [--lines N]     the end of the runtime logs
  fab drain H / fab enable H          take a host's instances out of / back into the load balancer
  fab restart --rolling               one instance at a time: drain, restart, wait ready, enable
  fab canary VERSION H                upgrade one host to a runtime version and report its smoke results
  fab doctor [--host H]               `model-runtime doctor` for every instance; exits with the worst status
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import paramiko
from fabric import Connection, task
from invoke import Context, Exit

from model_runtime.doctor import EXIT_CODES, report_from_output
from model_runtime.fleet.haproxy_stats import stats_rows
from model_runtime.fleet.inventory import FleetHost, load_fleet
from model_runtime.fleet.status import render

REPO = Path(__file__).resolve().parent
DEFAULT_INVENTORY = os.environ.get("FLEET_INVENTORY", str(REPO / "inventories" / "local"))
DRAIN_TIMEOUT_S = 300


class Fleet:
    def __init__(self, inventory: str) -> None:
        self.inventory = inventory
        self.hosts = load_fleet(Path(inventory))
        self._connections: dict[str, Connection] = {}

    def group(self, name: str) -> list[FleetHost]:
        return [h for h in self.hosts.values() if name in h.groups]

    def host(self, name: str) -> FleetHost:
        if name not in self.hosts:
            raise Exit(f"{name}: not in {self.inventory} (hosts: {', '.join(sorted(self.hosts))})", code=2)
        return self.hosts[name]

    def run(self, host: FleetHost, command: str, warn: bool = False) -> str:
        if host.local:
            result = Context().run(command, hide=True, warn=warn, in_stream=False)
        else:
            result = self._connect(host).run(command, hide=True, warn=warn, in_stream=False)
        return result.stdout

    def _connect(self, host: FleetHost) -> Connection:
        if host.name not in self._connections:
            key = host.vars.get("ansible_ssh_private_key_file")
            connection = Connection(
                host.address,
                user=host.vars.get("ansible_user"),
                port=int(host.vars.get("ansible_port") or 22),
                connect_kwargs={
                    "key_filename": key,
                    "look_for_keys": key is None,
                    "allow_agent": key is None,
                },
            )
            # Fabric would add an unknown host key silently; a changed or unknown key must stop us.
            connection.client.set_missing_host_key_policy(paramiko.RejectPolicy())
            connection.client.load_host_keys(host.known_hosts or os.path.expanduser("~/.ssh/known_hosts"))
            self._connections[host.name] = connection
        return self._connections[host.name]

    # --- what the roles put on a host ---------------------------------------------------------------
    def service_manager(self, host: FleetHost) -> str:
        declared = host.vars.get("model_runtime_service_manager")
        if declared:
            return declared
        return (
            "systemd"
            if self.run(host, "test -d /run/systemd/system && echo yes", warn=True).strip()
            else "supervisord"
        )

    def restart_command(self, host: FleetHost, instance: int) -> str:
        if self.service_manager(host) == "systemd":
            return f"systemctl restart model-runtime-{instance}.service"
        return (
            " ".join(shlex.quote(p) for p in host.vars["model_runtime_supervisorctl"])
            + f" restart model-runtime-{instance}"
        )

    def ready(self, host: FleetHost, instance: int) -> bool:
        # Asked on the host itself; an instance serving TLS must show a certificate from the fleet CA.
        tls = bool(host.vars.get("model_runtime_tls"))
        address = f"{host.vars['model_runtime_listen_address']}:{host.port(instance)}"
        url = f"{'https' if tls else 'http'}://{address}/health/ready"
        context = f"ssl.create_default_context(cafile={host.vars['model_runtime_tls_dir'] + '/ca.pem'!r})"
        probe = (
            f"import ssl, urllib.request as u; "
            f"print(u.urlopen({url!r}, timeout=3, context={context if tls else None}).status)"
        )
        return self.run(host, f"python3 -c {shlex.quote(probe)}", warn=True).strip() == "200"

    def haproxy(self, command: str) -> list[str]:
        """Send a runtime API command to every load balancer; return their answers."""
        answers = []
        for balancer in self.group("loadbalancers"):
            socket = f"{balancer.vars['loadbalancer_run_dir']}/admin.sock"
            answers.append(
                self.run(balancer, f"echo {shlex.quote(command)} | socat stdio UNIX-CONNECT:{socket}")
            )
        return answers

    def set_state(self, host: FleetHost, instance: int, state: str) -> None:
        backend = (
            self.group("loadbalancers")[0].vars["loadbalancer_backend_name"]
            if self.group("loadbalancers")
            else ""
        )
        self.haproxy(f"set server {backend}/{host.name}-{instance} state {state}")

    def sessions(self, host: FleetHost, instance: int) -> int:
        total = 0
        for answer in self.haproxy("show stat"):
            for row in stats_rows(answer):
                if row.get("svname") == f"{host.name}-{instance}":
                    total += int(row.get("scur") or 0)
        return total

    def drain(self, host: FleetHost, instance: int) -> None:
        self.set_state(host, instance, "drain")
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self.sessions(host, instance) and time.monotonic() < deadline:
            time.sleep(0.5)

    def wait_ready(self, host: FleetHost, instance: int, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready(host, instance):
            if time.monotonic() > deadline:
                raise Exit(f"{host.name} instance {instance} not ready after {timeout:.0f}s", code=1)
            time.sleep(1)

    def record(self, host: FleetHost) -> dict:
        text = self.run(host, f"cat {shlex.quote(host.vars['model_runtime_facts_file'])}", warn=True)
        return json.loads(text) if text.strip() else {}


def _desired(fleet: Fleet) -> dict:
    servers = fleet.group("gpu_servers")
    first = servers[0].vars if servers else {}
    return {"runtime_version": first.get("model_runtime_version"), "model": first.get("model_artifacts_name")}


@task(help={"inventory": "Ansible inventory", "json": "print JSON instead of the table"})
def status(c: Context, inventory: str = DEFAULT_INVENTORY, json: bool = False) -> None:
    """The fleet: what each instance runs, and where it differs from the inventory."""
    fleet = Fleet(inventory)
    records = {h.name: fleet.record(h) for h in fleet.group("gpu_servers")}
    print(render(records, _desired(fleet), as_json=json))


@task(
    help={"host": "one host (default: all)", "lines": "lines per instance", "inventory": "Ansible inventory"}
)
def logs(c: Context, host: str = "", lines: int = 50, inventory: str = DEFAULT_INVENTORY) -> None:
    """The end of each runtime instance's log."""
    fleet = Fleet(inventory)
    for target in [fleet.host(host)] if host else fleet.group("gpu_servers"):
        for instance in target.instances():
            if fleet.service_manager(target) == "systemd":
                command = f"journalctl -u model-runtime-{instance}.service -n {int(lines)} --no-pager"
            else:
                log = f"{target.vars['model_runtime_log_dir']}/model-runtime-{instance}.log"
                command = f"tail -n {int(lines)} {shlex.quote(log)}"
            print(f"==> {target.name} instance {instance} <==")
            print(fleet.run(target, command, warn=True))


@task(help={"host": "the host to take out", "inventory": "Ansible inventory"})
def drain(c: Context, host: str, inventory: str = DEFAULT_INVENTORY) -> None:
    """Drain a host's instances at the load balancers and wait until their sessions end."""
    fleet = Fleet(inventory)
    target = fleet.host(host)
    for instance in target.instances():
        fleet.drain(target, instance)
        print(f"{host}-{instance}: drained, {fleet.sessions(target, instance)} sessions")


@task(help={"host": "the host to put back", "inventory": "Ansible inventory"})
def enable(c: Context, host: str, inventory: str = DEFAULT_INVENTORY) -> None:
    """Put a host's instances back into the load balancers."""
    fleet = Fleet(inventory)
    target = fleet.host(host)
    for instance in target.instances():
        fleet.set_state(target, instance, "ready")
        print(f"{host}-{instance}: enabled")


@task(help={"rolling": "one instance at a time (the only way offered)", "inventory": "Ansible inventory"})
def restart(c: Context, rolling: bool = True, inventory: str = DEFAULT_INVENTORY) -> None:
    """Restart every instance, one at a time: drain, restart, wait ready, enable."""
    if not rolling:
        raise Exit("only --rolling restarts are offered: all at once would drop requests", code=2)
    fleet = Fleet(inventory)
    for target in fleet.group("gpu_servers"):
        for instance in target.instances():
            fleet.drain(target, instance)
            fleet.run(target, fleet.restart_command(target, instance))
            fleet.wait_ready(target, instance)
            fleet.set_state(target, instance, "ready")
            print(f"{target.name}-{instance}: restarted and ready")


@task(help={"version": "runtime version", "host": "the canary host", "inventory": "Ansible inventory"})
def canary(c: Context, version: str, host: str, inventory: str = DEFAULT_INVENTORY) -> None:
    """Upgrade one host to a runtime version (upgrade.yml --limit HOST); report its smoke results."""
    fleet = Fleet(inventory)
    fleet.host(host)
    command = [
        str(Path(sys.executable).parent / "ansible-playbook"), "-i", inventory,
        str(REPO / "playbooks" / "upgrade.yml"), "--limit", host,
        "-e", json.dumps({"model_runtime_version": version}),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    smoke = [line.strip() for line in done.stdout.splitlines() if "smoke:" in line]
    print("\n".join(smoke) or "(no smoke results: the upgrade stopped before them)")
    if done.returncode != 0:
        print(done.stdout[-3000:])
        raise Exit(f"canary on {host} failed (the host is back on its previous release)", code=1)
    print(f"canary {host}: {version} passed its smoke test")


@task(help={"host": "one host (default: all)", "inventory": "Ansible inventory"})
def doctor(c: Context, host: str = "", inventory: str = DEFAULT_INVENTORY) -> None:
    """`model-runtime doctor` for each instance, with the release it runs; exit 0 ok, 1 warn, 2 fail."""
    fleet = Fleet(inventory)
    worst = "ok"
    for target in [fleet.host(host)] if host else fleet.group("gpu_servers"):
        running = fleet.record(target).get("instances") or {}
        for instance in target.instances():
            # The release this instance runs (its record), else the one the inventory installs.
            version = (running.get(str(instance)) or {}).get("runtime_version") or target.vars[
                "model_runtime_version"
            ]
            binary = f"{target.vars['model_runtime_install_dir']}/releases/{version}/venv/bin/model-runtime"
            config = f"{target.vars['model_runtime_config_dir']}/instance-{instance}.yaml"
            command = f"{shlex.quote(binary)} doctor --config {shlex.quote(config)} 2>&1"
            report = report_from_output(fleet.run(target, command, warn=True))
            print(f"==> {target.name} instance {instance} ({version}): {report['status']} <==")
            print(json.dumps(report, indent=2))
            worst = max(worst, report["status"], key=EXIT_CODES.__getitem__)
    if worst != "ok":
        raise Exit(f"doctor: {worst}", code=EXIT_CODES[worst])
