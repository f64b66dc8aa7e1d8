"""site.yml over SSH onto test hosts in network namespaces (no network beyond the bridge: installs come
from the wheelhouse), checked with testinfra; preflight failures that stop before any change; a
corrupt model version refused while the previous one keeps serving."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai
import pytest
import testinfra

from model_runtime.fleet.haproxy_stats import server_rows
from tests.support.ansible import ensure_wheelhouse, playbook, release_wheelhouse
from tests.support.models import REPO
from tests.support.netns import SUBNET, TestHost, TestHosts

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and sshd need root"),
]

KEY = "bare-metal-test-key"
DEBIAN_10 = (
    'PRETTY_NAME="Debian GNU/Linux 10 (buster)"\nNAME="Debian GNU/Linux"\nVERSION_ID="10"\n'
    'VERSION="10 (buster)"\nVERSION_CODENAME=buster\nID=debian\n'
)


def fleet_vars(wheelhouse: Path, model: Path, *more_wheelhouses: Path) -> dict:
    """What a real inventory's group_vars would say, with every path under each host's prefix."""
    offline = f"--no-index --find-links {wheelhouse}" + "".join(
        f" --find-links {w}" for w in more_wheelhouses
    )
    return {
        "model_artifacts_prefix": "{{ fleet_prefix }}",
        "model_artifacts_name": "demo",
        "model_artifacts_source": str(model),
        "model_artifacts_group": "{{ model_runtime_group }}",
        "model_runtime_prefix": "{{ fleet_prefix }}",
        "model_runtime_version": (wheelhouse / "RUNTIME_VERSION").read_text().strip(),
        "model_runtime_pip_args": offline,
        "model_runtime_service_manager": "supervisord",
        # Per-host users: the hosts share /etc/passwd, and users are created concurrently.
        "model_runtime_user": "mrt-{{ inventory_hostname }}",
        "model_runtime_group": "mrt-{{ inventory_hostname }}",
        "model_runtime_listen_address": "{{ ansible_host }}",
        "model_runtime_api_keys": [KEY],
        "model_runtime_shutdown_grace_s": 5,
        "loadbalancer_prefix": "{{ fleet_prefix }}",
        "loadbalancer_service_manager": "supervisord",
        "loadbalancer_bind_address": "{{ ansible_host }}",
        "loadbalancer_port": 8000,
        "loadbalancer_pip_args": offline,
    }


@pytest.fixture(scope="module")
def hosts():
    # Not pytest's tmp_path: the hosts' service users must be able to reach their files (0755).
    root = Path(tempfile.mkdtemp(prefix="mrt-hosts-"))
    root.chmod(0o755)
    made = [
        TestHost("a", f"{SUBNET}.11", root / "a"),
        TestHost("b", f"{SUBNET}.12", root / "b"),
        TestHost("old", f"{SUBNET}.13", root / "old", os_release=DEBIAN_10, debian_version="10.13\n"),
        TestHost("small", f"{SUBNET}.14", root / "small", small_disk="2m"),
    ]
    with TestHosts(root, made) as test_hosts:
        yield test_hosts
    for name in test_hosts.hosts:
        subprocess.run(["userdel", f"mrt-{name}"], capture_output=True, check=False)
        subprocess.run(["groupdel", f"mrt-{name}"], capture_output=True, check=False)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def fleet(hosts: TestHosts, demo_model: Path, tmp_path_factory: pytest.TempPathFactory):
    wheelhouse = ensure_wheelhouse()
    # A second runtime release, for the canary: only its wheel (the dependencies are in the first).
    nxt, next_runtime = release_wheelhouse(Path(tempfile.mkdtemp(prefix="mrt-wheelhouse-next-")), "canary")
    inventory = hosts.inventory(
        tmp_path_factory.mktemp("inventory") / "hosts.yml",
        {"gpu_servers": ["a", "b"], "loadbalancers": ["a"]},
        fleet_vars(wheelhouse, demo_model, nxt),
    )
    run = playbook("site.yml", inventory)
    yield {"run": run, "inventory": inventory, "wheelhouse": wheelhouse, "model": demo_model,
           "next_runtime": next_runtime}  # fmt: skip
    shutil.rmtree(nxt, ignore_errors=True)


def host(fleet: dict, name: str) -> testinfra.host.Host:
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=str(fleet["inventory"]))


def test_site_over_ssh_succeeds(fleet: dict) -> None:
    assert fleet["run"].returncode == 0, fleet["run"].output[-5000:]
    assert set(fleet["run"].recap()) == {"a", "b"}


@pytest.mark.parametrize("name", ["a", "b"])
def test_host_state(fleet: dict, hosts: TestHosts, name: str) -> None:
    machine = host(fleet, name)
    prefix = hosts.hosts[name].prefix
    user = machine.user(f"mrt-{name}")
    assert user.exists
    assert user.shell == "/usr/sbin/nologin"
    assert user.uid < 1000
    config = machine.file(f"{prefix}/etc/model-runtime/instance-1.yaml")
    assert (config.mode, config.user, config.group) == (0o640, "root", f"mrt-{name}")
    keys = machine.file(f"{prefix}/etc/model-runtime/api-keys")
    assert (keys.mode, keys.user) == (0o600, f"mrt-{name}")
    assert KEY in keys.content_string
    current = machine.file(f"{prefix}/var/lib/model-runtime/models/demo/current")
    assert current.is_symlink
    assert machine.file(f"{current.linked_to}/.verified").exists
    address = hosts.hosts[name].address
    assert machine.socket(f"tcp://{address}:8101").is_listening
    serving = [p for p in machine.process.filter(user=f"mrt-{name}") if "model-runtime serve" in p.args]
    assert serving, "no model-runtime process runs as the service user"
    ready = machine.ansible("uri", f"url=http://{address}:8101/health/ready", check=False)
    assert ready["status"] == 200


def test_haproxy_balances_over_both_hosts(fleet: dict) -> None:
    client = openai.OpenAI(base_url=f"http://{SUBNET}.11:8000/v1", api_key=KEY, max_retries=0)
    reply = client.completions.create(model="demo", prompt="This License", max_tokens=8)
    assert reply.choices[0].text
    assert lb_states(fleet) == {"a-1": "UP", "b-1": "UP"}


def test_corrupt_model_version_is_refused_and_the_previous_keeps_serving(
    fleet: dict, hosts: TestHosts, tmp_path: Path
) -> None:
    broken = tmp_path / "demo-broken"
    shutil.copytree(fleet["model"], broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    before = manifest["version"]
    manifest["version"] = "broken-1"
    (broken / "manifest.json").write_text(json.dumps(manifest))
    weights = broken / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one corrupted byte
    weights.write_bytes(bytes(data))

    run = playbook("deploy.yml", fleet["inventory"], {"model_artifacts_source": str(broken)}, "--limit", "a")
    assert run.returncode != 0
    assert "model.safetensors" in run.output
    assert "was refused and not installed" in run.output
    models = hosts.hosts["a"].prefix / "var/lib/model-runtime/models/demo"
    assert (models / "current").resolve().name == before
    assert not (models / "broken-1").exists()
    assert not (models / ".broken-1.partial").exists()
    served = openai.OpenAI(base_url=f"http://{SUBNET}.11:8101/v1", api_key=KEY, max_retries=0).models.list()
    assert served.data[0].model_extra["version"] == before


def test_unsupported_os_stops_before_any_change(hosts: TestHosts, demo_model: Path, tmp_path: Path) -> None:
    inventory = hosts.inventory(
        tmp_path / "hosts.yml", {"gpu_servers": ["old"], "loadbalancers": ["old"]},
        fleet_vars(ensure_wheelhouse(), demo_model),
    )  # fmt: skip
    run = playbook("site.yml", inventory)
    assert run.returncode != 0
    assert "unsupported OS Debian 10" in run.output
    assert run.changed() == 0
    assert list(hosts.hosts["old"].prefix.iterdir()) == []


def test_too_little_disk_stops_before_any_change(hosts: TestHosts, demo_model: Path, tmp_path: Path) -> None:
    inventory = hosts.inventory(
        tmp_path / "hosts.yml", {"gpu_servers": ["small"], "loadbalancers": ["small"]},
        fleet_vars(ensure_wheelhouse(), demo_model),
    )  # fmt: skip
    run = playbook("site.yml", inventory)
    assert run.returncode != 0
    assert "not enough free disk" in run.output
    assert run.changed() == 0
    assert hosts.ssh("small", f"ls -A {hosts.hosts['small'].prefix}").stdout == ""


def test_deploy_a_model_from_the_registry_by_alias(fleet: dict, hosts: TestHosts, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    pushed = subprocess.run(
        [sys.executable, "-m", "model_runtime", "registry", "--registry", str(registry), "push", "demo",
         str(fleet["model"]), "--alias", "stable"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    version = pushed.stdout.strip().split(":", 1)[1].split(" ")[0]
    run = playbook(
        "deploy.yml", fleet["inventory"], {"model": "demo@stable", "model_artifacts_registry": str(registry)}
    )
    assert run.returncode == 0, run.output[-5000:]
    for name in ("a", "b"):
        client = openai.OpenAI(
            base_url=f"http://{hosts.hosts[name].address}:8101/v1", api_key=KEY, max_retries=0
        )
        assert client.models.list().data[0].model_extra["version"] == version
        kept = json.loads(
            (
                hosts.hosts[name].prefix / f"var/lib/model-runtime/models/demo/{version}/manifest.json"
            ).read_text()
        )
        assert all("url" not in entry for entry in kept["files"])  # fetch URLs are not part of the version


def fab(fleet: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "fab"), *args, "--inventory", str(fleet["inventory"])],
        capture_output=True, text=True, cwd=REPO, check=False, timeout=900,
    )  # fmt: skip


def test_fab_lists_its_tasks() -> None:
    listing = subprocess.run([str(Path(sys.executable).parent / "fab"), "-l"], capture_output=True, text=True,
                             cwd=REPO, check=True).stdout  # fmt: skip
    for name in ("status", "logs", "drain", "enable", "restart", "canary", "doctor"):
        assert re.search(rf"^\s+{name}\b", listing, re.MULTILINE), listing


def test_fab_status_table_and_json(fleet: dict) -> None:
    table = fab(fleet, "status")
    assert table.returncode == 0, table.stderr
    assert re.search(r"^a\s+1\s+\S+\s+demo@", table.stdout, re.MULTILINE)
    assert re.search(r"^b\s+1\s+\S+\s+demo@", table.stdout, re.MULTILINE)
    data = json.loads(fab(fleet, "status", "--json").stdout)
    assert {row["host"] for row in data["instances"]} == {"a", "b"}


def test_fab_logs(fleet: dict) -> None:
    logs = fab(fleet, "logs", "--host", "a", "--lines", "5")
    assert logs.returncode == 0, logs.stderr
    assert "==> a instance 1 <==" in logs.stdout
    assert '"logger"' in logs.stdout


def lb_states(fleet: dict) -> dict[str, str]:
    stats = host(fleet, "a").ansible(
        "uri", "url=http://127.0.0.1:8404/stats;csv return_content=true", check=False
    )
    return {row["svname"]: row["status"] for row in server_rows(stats["content"], "model_runtime")}


def test_fab_drain_and_enable(fleet: dict) -> None:
    drained = fab(fleet, "drain", "b")
    assert drained.returncode == 0, drained.stderr
    assert lb_states(fleet)["b-1"] == "DRAIN"
    enabled = fab(fleet, "enable", "b")
    assert enabled.returncode == 0, enabled.stderr
    deadline = time.monotonic() + 30
    while lb_states(fleet)["b-1"] != "UP":
        assert time.monotonic() < deadline
        time.sleep(0.5)


def test_fab_rolling_restart(fleet: dict, hosts: TestHosts) -> None:
    def pids() -> dict[str, str]:
        return {name: hosts.ssh(name, f"pgrep -u mrt-{name} -f 'model-runtime serve'").stdout.split()[0]
                for name in ("a", "b")}  # fmt: skip

    before = pids()
    restarted = fab(fleet, "restart", "--rolling")
    assert restarted.returncode == 0, restarted.stderr
    assert "a-1: restarted and ready" in restarted.stdout
    assert "b-1: restarted and ready" in restarted.stdout
    after = pids()
    assert all(after[n] != before[n] for n in after)
    assert lb_states(fleet) == {"a-1": "UP", "b-1": "UP"}


def test_fab_canary_upgrades_one_host(fleet: dict, hosts: TestHosts) -> None:
    canary = fab(fleet, "canary", fleet["next_runtime"], "a")
    assert canary.returncode == 0, canary.stdout[-3000:] + canary.stderr
    assert "smoke: a-1" in canary.stdout

    def version(name: str) -> str:
        client = openai.OpenAI(
            base_url=f"http://{hosts.hosts[name].address}:8101/v1", api_key=KEY, max_retries=0
        )
        return client.completions.create(model="demo", prompt="Hi", max_tokens=1).system_fingerprint

    assert version("a").startswith(f"model-runtime-{fleet['next_runtime']}:")
    assert not version("b").startswith(f"model-runtime-{fleet['next_runtime']}:")


def test_fab_refuses_a_host_whose_key_is_unknown(fleet: dict, hosts: TestHosts, tmp_path: Path) -> None:
    wrong = tmp_path / "known_hosts"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    wrong.write_text(
        f"{hosts.hosts['a'].address} " + " ".join((tmp_path / "other.pub").read_text().split()[:2]) + "\n"
    )
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(fleet["inventory"].read_text().replace(str(hosts.known_hosts), str(wrong)))
    refused = fab({**fleet, "inventory": inventory}, "status")
    assert refused.returncode != 0
    assert "BadHostKeyException" in refused.stderr or "not found in known_hosts" in refused.stderr
