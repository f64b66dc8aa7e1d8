"""Day-2 operations over SSH: `fab -l` lists them. Hosts come from the Ansible inventory (--inventory,
default inventories/local), with the variables a play would see; SSH host keys are checked against the
inventory's known_hosts (or ~/.ssh/known_hosts), and an unknown host is refused.

  fab status [--json]                 the fleet table (what each instance runs, what differs, its LB state)
  fab logs [--host H] [--lines N]     the end of the runtime logs
  fab drain H / fab enable H          take a host's instances out of / back into the load balancers
  fab restart --rolling               one instance at a time: drain, restart, wait ready, smoke, enable
  fab canary VERSION H                upgrade one host to a runtime version and report its smoke results
  fab doctor [--host H]               `model-runtime doctor` for every instance; exits with the worst status

Tasks that change the fleet run its playbooks (pool.yml, restart.yml, upgrade.yml), so that they take the
same steps, checks and records as any other run, and the fleet's lock (callback_plugins/fleet_lock.py:
while another run holds it they change nothing and name the holder); the read-only ones ask the hosts
directly. The load
balancers are read through module_utils/haproxy_runtime.py, the client the haproxy_server module uses.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import paramiko
from fabric import Connection, task
from invoke import Context, Exit

from fleet_ops.cycle import parse_cycles
from fleet_ops.inventory import FleetHost, load_fleet
from fleet_ops.status import render
from model_runtime.doctor import EXIT_CODES, report_from_output

REPO = Path(__file__).resolve().parent
DEFAULT_INVENTORY = os.environ.get("FLEET_INVENTORY", str(REPO / "inventories" / "local"))
ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")
# Sent to the load balancers' own Python: it needs nothing installed there (module_utils is stdlib only).
HAPROXY_CLIENT = REPO / "module_utils" / "haproxy_runtime.py"


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

    def pools(self) -> dict[str, dict[str, dict]]:
        """Each load balancer's view of its models' backends: server -> {status, sessions}."""
        client = shlex.quote(HAPROXY_CLIENT.read_text())
        views = {}
        for balancer in self.group("loadbalancers"):
            socket = balancer.vars["loadbalancer_admin_socket"]
            prefix = balancer.vars["loadbalancer_backend_name"]  # of each model's backend
            command = f"python3 -c {client} {shlex.quote(socket)} {shlex.quote(prefix)}"
            views[balancer.name] = json.loads(self.run(balancer, command))
        return views

    def record(self, host: FleetHost) -> dict:
        text = self.run(host, f"cat {shlex.quote(host.vars['model_runtime_facts_file'])}", warn=True)
        return json.loads(text) if text.strip() else {}


def _desired(fleet: Fleet) -> dict:
    """Model -> what the inventory wants of it (its runtime and its name; the model version is known to
    deploy and upgrade runs only)."""
    return {
        entry["name"]: {"runtime_version": server.vars.get("model_runtime_version"), "model": entry["name"]}
        for server in fleet.group("gpu_servers")
        for entry in server.models()
    }


@task(help={"inventory": "Ansible inventory", "json": "print JSON instead of the table"})
def status(c: Context, inventory: str = DEFAULT_INVENTORY, json: bool = False) -> None:
    """The fleet: what each instance runs, where it differs from the inventory, its load balancer state."""
    fleet = Fleet(inventory)
    records = {h.name: fleet.record(h) for h in fleet.group("gpu_servers")}
    print(render(records, _desired(fleet), as_json=json, pools=fleet.pools()))


@task(
    help={"host": "one host (default: all)", "lines": "lines per instance", "inventory": "Ansible inventory"}
)
def logs(c: Context, host: str = "", lines: int = 50, inventory: str = DEFAULT_INVENTORY) -> None:
    """The end of each runtime instance's log."""
    fleet = Fleet(inventory)
    for target in [fleet.host(host)] if host else fleet.group("gpu_servers"):
        for instance in target.instances():
            service = target.service(instance)
            if fleet.service_manager(target) == "systemd":
                command = f"journalctl -u {shlex.quote(service + '.service')} -n {int(lines)} --no-pager"
            else:
                log = f"{target.vars['model_runtime_log_dir']}/{service}.log"
                command = f"tail -n {int(lines)} {shlex.quote(log)}"
            print(f"==> {target.name} instance {instance} <==")
            print(fleet.run(target, command, warn=True))


def _playbook(inventory: str, name: str, extra_vars: dict, *args: str) -> subprocess.CompletedProcess:
    path = str(REPO / "playbooks" / name)
    command = [ANSIBLE_PLAYBOOK, "-i", inventory, path, *args, "-e", json.dumps(extra_vars)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)


def _stop_unless_done(run: subprocess.CompletedProcess, what: str) -> None:
    if run.returncode != 0:
        print(run.stdout[-3000:] + run.stderr[-1000:])
        raise Exit(what, code=1)


def _set_pool_state(inventory: str, host: str, state: str) -> None:
    """pool.yml for the host's instances; then what every load balancer now says of them."""
    fleet = Fleet(inventory)
    target = fleet.host(host)
    run = _playbook(inventory, "pool.yml", {"fleet_pool_host": host, "fleet_pool_state": state})
    _stop_unless_done(run, f"{host}: not {state} at every load balancer")
    pools = fleet.pools()
    for instance in target.instances():
        server = f"{host}-{instance}"
        for balancer, pool in pools.items():
            seen = pool.get(server, {"status": "absent", "sessions": 0})
            print(f"{server}: {seen['status']} at {balancer}, {seen['sessions']} sessions")


@task(help={"host": "the host to take out", "inventory": "Ansible inventory"})
def drain(c: Context, host: str, inventory: str = DEFAULT_INVENTORY) -> None:
    """Drain a host's instances at every load balancer and wait until their sessions end (pool.yml)."""
    _set_pool_state(inventory, host, "drain")


@task(help={"host": "the host to put back", "inventory": "Ansible inventory"})
def enable(c: Context, host: str, inventory: str = DEFAULT_INVENTORY) -> None:
    """Put a host's instances back into every load balancer, once their health checks pass (pool.yml)."""
    _set_pool_state(inventory, host, "ready")


@task(help={"rolling": "one instance at a time (the only way offered)", "inventory": "Ansible inventory"})
def restart(c: Context, rolling: bool = True, inventory: str = DEFAULT_INVENTORY) -> None:
    """Restart every instance, one at a time: drain, restart, wait ready, smoke test, enable (restart.yml)."""
    if not rolling:
        raise Exit("only --rolling restarts are offered: all at once would drop requests", code=2)
    run = _playbook(inventory, "restart.yml", {})
    for server, steps in parse_cycles(run.stdout).items():
        print(f"{server}: restarted and ready (cycle {steps['total']:.1f}s)")
    _stop_unless_done(run, "the rolling restart stopped (the failed instance is back in the pool)")


@task(help={"version": "runtime version", "host": "the canary host", "inventory": "Ansible inventory"})
def canary(c: Context, version: str, host: str, inventory: str = DEFAULT_INVENTORY) -> None:
    """Upgrade one host to a runtime version (upgrade.yml --limit HOST); report its smoke results."""
    Fleet(inventory).host(host)
    run = _playbook(inventory, "upgrade.yml", {"model_runtime_version": version}, "--limit", host)
    smoke = [line.strip() for line in run.stdout.splitlines() if "smoke:" in line]
    print("\n".join(smoke) or "(no smoke results: the upgrade stopped before them)")
    _stop_unless_done(run, f"canary on {host} failed (the host is back on its previous release)")
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
