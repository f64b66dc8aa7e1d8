"""The firewall role on a test host in a network namespace, with its real nftables: the instances' port
accepts only the load balancer's address (and the host itself), the internal listener's only the
monitoring host's; everyone else gets a reset. A second run changes nothing; a source that is not an
address is refused before anything is written; turned off, the rules are gone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import REPO
from harness.netns import SUBNET, TestHost, TestHosts, connects
from harness.playbooks import PlaybookRun, playbook

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and nftables need root"),
    pytest.mark.skipif(
        shutil.which("nft") is None, reason="nftables is not installed (apt-get install nftables)"
    ),
]

PLAYBOOK = REPO / "tests" / "integration" / "playbooks" / "firewall.yml"
INSTANCE, INTERNAL = 18101, 19101  # an instance's port, its internal listener's (metrics, admin)


@pytest.fixture(scope="module")
def hosts() -> Iterator[TestHosts]:
    root = Path(tempfile.mkdtemp(prefix="mrt-firewall-"))
    root.chmod(0o755)
    made = [
        TestHost("gpu", f"{SUBNET}.31", root / "gpu"),  # the GPU server the role runs on
        TestHost("lb", f"{SUBNET}.32", root / "lb"),  # its load balancer
        TestHost("mon", f"{SUBNET}.33", root / "mon"),  # the monitoring host
        TestHost("other", f"{SUBNET}.34", root / "other"),  # anyone else on the LAN
    ]
    with TestHosts(root, made) as test_hosts:
        yield test_hosts
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def listening(hosts: TestHosts) -> Iterator[None]:
    """Something listening on both ports of the GPU server's address, as the instances would."""
    address = hosts.hosts["gpu"].address
    script = (
        "import socket, sys, time\n"
        f"servers = [socket.create_server(({address!r}, port)) for port in ({INSTANCE}, {INTERNAL})]\n"
        "print('listening', flush=True)\n"
        "time.sleep(3600)\n"
    )
    server = subprocess.Popen(
        ["ip", "netns", "exec", hosts.hosts["gpu"].namespace, sys.executable, "-c", script],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "listening"
    yield
    server.kill()
    server.wait()


def run(hosts: TestHosts, tmp_path: Path, **settings: object) -> PlaybookRun:
    inventory = hosts.inventory(tmp_path / "hosts.yml", {"gpu_servers": ["gpu"]})
    wanted = {
        "firewall_enabled": True,
        "firewall_prefix": "{{ fleet_prefix }}",
        "firewall_instance_ports": [INSTANCE],
        "firewall_instance_sources": [hosts.hosts["lb"].address],
        "firewall_metrics_ports": [INTERNAL],
        "firewall_metrics_sources": [hosts.hosts["mon"].address],
        "firewall_boot_unit": False,  # no systemd in the test hosts
        **settings,
    }
    return playbook(str(PLAYBOOK), inventory, wanted)


def reachable_from(hosts: TestHosts, port: int) -> set[str]:
    """The hosts (and "control", this machine) whose connections to the GPU server's port succeed."""
    address = hosts.hosts["gpu"].address
    reached = {"control"} if connects(address, port) else set()
    for name in hosts.hosts:
        with hosts.network_of(name):
            if connects(address, port):
                reached.add(name)
    return reached


@pytest.fixture(scope="module")
def firewalled(hosts: TestHosts, listening: None, tmp_path_factory: pytest.TempPathFactory) -> PlaybookRun:
    """The GPU server before the rules (everyone reaches it), then with them: the first run."""
    assert reachable_from(hosts, INSTANCE) == {"control", "gpu", "lb", "mon", "other"}
    return run(hosts, tmp_path_factory.mktemp("firewall"))


def test_only_the_load_balancer_reaches_the_instances(
    hosts: TestHosts, firewalled: PlaybookRun, tmp_path: Path
) -> None:
    assert firewalled.returncode == 0, firewalled.output[-3000:]
    assert reachable_from(hosts, INSTANCE) == {"gpu", "lb"}
    assert reachable_from(hosts, INTERNAL) == {"gpu", "mon"}
    again = run(hosts, tmp_path)
    assert again.returncode == 0, again.output[-3000:]
    assert again.changed() == 0, again.output[-3000:]


def test_a_source_that_is_not_an_address_is_refused_before_any_change(
    hosts: TestHosts, firewalled: PlaybookRun, tmp_path: Path
) -> None:
    rules = hosts.hosts["gpu"].prefix / "etc/nftables.d/model-runtime.nft"
    before = rules.read_text()
    done = run(hosts, tmp_path, firewall_instance_sources=[f"{SUBNET}.32 }} accept; flush ruleset; #"])
    assert done.returncode != 0
    assert "firewall_instance_sources" in done.output
    assert done.changed() == 0
    assert rules.read_text() == before
    assert reachable_from(hosts, INSTANCE) == {"gpu", "lb"}


def test_turned_off_the_rules_are_gone(hosts: TestHosts, firewalled: PlaybookRun, tmp_path: Path) -> None:
    done = run(hosts, tmp_path, firewall_enabled=False)
    assert done.returncode == 0, done.output[-3000:]
    assert not (hosts.hosts["gpu"].prefix / "etc/nftables.d/model-runtime.nft").exists()
    assert hosts.ssh("gpu", "nft list tables").stdout.strip() == ""
    assert reachable_from(hosts, INSTANCE) == {"control", "gpu", "lb", "mon", "other"}
