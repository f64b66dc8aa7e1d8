"""site.yml over SSH onto test hosts in network namespaces (no network beyond the bridge: installs come
from the wheelhouse), checked with testinfra; preflight failures that stop before any change; a
corrupt model version refused while the previous one keeps serving. The fleet is set up as the example
inventory sets up a real one: TLS from the clients to HAProxy and from HAProxy to the instances, with
certificates from the fleet CA kept on the control node (this machine, outside every host's files), and
a firewall that lets only the load balancer reach the instances; what HAProxy forwards, the TLS it
accepts and the user it runs as are checked here too."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import openai
import pytest
import testinfra
import yaml

from callback_plugins.fleet_lock import LOCK_NAME, FleetLock, holder_of
from harness import REPO
from harness.fleet import model_copy
from harness.host_fleet import fleet_vars
from harness.load import Load, completions
from harness.netns import SUBNET, TestHost, TestHosts, connects
from harness.playbooks import ensure_wheelhouse, playbook, release_wheelhouse, role_defaults
from model_runtime.registry.registry import Registry
from module_utils.haproxy_runtime import model_server_rows

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and sshd need root"),
]

KEY = "bare-metal-test-key"
DEBIAN_10 = (
    'PRETTY_NAME="Debian GNU/Linux 10 (buster)"\nNAME="Debian GNU/Linux"\nVERSION_ID="10"\n'
    'VERSION="10 (buster)"\nVERSION_CODENAME=buster\nID=debian\n'
)


LB = f"{SUBNET}.11"  # host a: a GPU server and the load balancer
# The roles' ports (each host runs one instance): where clients, HAProxy and monitoring connect.
RUNTIME, BALANCER = role_defaults("model_runtime"), role_defaults("loadbalancer")
PORT, METRICS_PORT = RUNTIME["model_runtime_base_port"], RUNTIME["model_runtime_metrics_base_port"]
LB_PORT, STATS_PORT = BALANCER["loadbalancer_port"], BALANCER["loadbalancer_stats_port"]


def fleet_tls(hosts: TestHosts) -> ssl.SSLContext:
    """A client's trust: the fleet CA's certificate, and nothing else."""
    return ssl.create_default_context(cafile=hosts.workdir / "fleet-ca" / "ca.pem")


def api(hosts: TestHosts, address: str, port: int) -> openai.OpenAI:
    """The official client, over verified TLS: to the load balancer, or (from a host the firewall
    lets in, see TestHosts.network_of) to an instance."""
    http = openai.DefaultHttpxClient(verify=fleet_tls(hosts))
    return openai.OpenAI(
        base_url=f"https://{address}:{port}/v1", api_key=KEY, max_retries=0, http_client=http
    )


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
    test_hosts.remove_users("mrt-")  # fleet_vars' model_runtime_user
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def fleet(hosts: TestHosts, demo_model: Path, tmp_path_factory: pytest.TempPathFactory):
    wheelhouse = ensure_wheelhouse()
    # A second runtime release, for the canary: only its wheel (the dependencies are in the first).
    nxt, next_runtime = release_wheelhouse(Path(tempfile.mkdtemp(prefix="mrt-wheelhouse-next-")), "canary")
    inventory = hosts.inventory(
        tmp_path_factory.mktemp("inventory") / "hosts.yml",
        {"gpu_servers": ["a", "b"], "loadbalancers": ["a"]},
        fleet_vars(hosts, KEY, wheelhouse, demo_model, nxt),
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


def test_a_second_site_run_changes_nothing(fleet: dict) -> None:
    # Certificates, keys and firewall rules included: the same files ship, the rules stay loaded.
    again = playbook("site.yml", fleet["inventory"])
    assert again.returncode == 0, again.output[-4000:]
    assert again.changed() == 0, [line for line in again.output.splitlines() if line.startswith("changed")]


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
    assert machine.socket(f"tcp://{address}:{PORT}").is_listening
    serving = [p for p in machine.process.filter(user=f"mrt-{name}") if "model-runtime serve" in p.args]
    assert serving, "no model-runtime process runs as the service user"
    tls = f"{prefix}/etc/model-runtime/tls"
    key = machine.file(f"{tls}/runtime.key")
    assert (key.mode, key.user) == (0o600, f"mrt-{name}")
    ready = machine.ansible(
        "uri", f"url=https://{address}:{PORT}/health/ready ca_path={tls}/ca.pem", check=False
    )
    assert ready["status"] == 200


def test_haproxy_balances_over_both_hosts(fleet: dict, hosts: TestHosts) -> None:
    client = api(hosts, LB, LB_PORT)
    # Greedy: a sampled first token may be the end of text (an empty answer, rightly).
    reply = client.completions.create(model="demo", prompt="This License", max_tokens=8, temperature=0)
    assert reply.choices[0].text
    chat = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
    )
    assert chat.choices[0].message.content
    assert [model.id for model in client.models.list().data] == ["demo"]
    # Both servers pass their health checks: HAProxy speaks TLS to them and verifies their certificates.
    assert lb_states(fleet) == {"a-1": "UP", "b-1": "UP"}


# Paths the runtime serves apart from the API (metrics, admin, its OpenAPI document), as a client might
# dress them up: escaped letters, dot segments, doubled slashes, another case.
NOT_FORWARDED = [
    "/metrics", "/%6Detrics", "/%6d%65trics", "//metrics", "/METRICS", "/v1/%2e%2e/metrics", "/v1/../metrics",
    "/v1/..%2Fmetrics", "/admin/models", "/%61dmin/models", "/v1//../admin/models", "/Admin/models",
    "/openapi.json", "/%6Fpenapi.json", "/docs", "/V1/models", "/v1/Models", "/v1%2Fmodels", "/health/live",
]  # fmt: skip


def lb_get(hosts: TestHosts, path: str) -> tuple[int, dict[str, str], bytes]:
    """GET through the load balancer with the path sent exactly as written (http.client, unlike httpx,
    neither resolves dot segments nor merges slashes)."""
    connection = http.client.HTTPSConnection(LB, LB_PORT, context=fleet_tls(hosts), timeout=30)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {KEY}"})
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()


@pytest.mark.parametrize("path", NOT_FORWARDED)
def test_the_load_balancer_answers_404_itself_for_anything_but_the_api(
    fleet: dict, hosts: TestHosts, path: str
) -> None:
    status, headers, body = lb_get(hosts, path)
    assert status == 404, body
    assert json.loads(body)["error"]["code"] == "not_found"
    # No instance saw the request: every answer of the runtime carries the request id it echoes.
    assert "x-request-id" not in headers


@pytest.mark.parametrize(
    "path",
    ["/v1/models", "//v1//models", "/%76%31/models", "/v1/./models", "/x/../v1/models", "/health/ready"],
)
def test_the_load_balancer_forwards_the_api_normalised(fleet: dict, hosts: TestHosts, path: str) -> None:
    status, headers, body = lb_get(hosts, path)
    assert status == 200, body
    assert headers["x-request-id"]  # answered by an instance


def s_client(hosts: TestHosts, *options: str) -> subprocess.CompletedProcess:
    """A TLS handshake with the load balancer by openssl's own client, trusting the fleet CA."""
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"{LB}:{LB_PORT}", "-verify_return_error",
         "-CAfile", str(hosts.workdir / "fleet-ca" / "ca.pem"), *options],
        input="", capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


# No forward secrecy (RSA key exchange), or CBC, or both.
@pytest.mark.parametrize(
    "cipher", ["AES128-SHA", "AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA384"]
)
def test_the_load_balancer_refuses_tls_suites_without_forward_secrecy_or_aead(
    fleet: dict, hosts: TestHosts, cipher: str
) -> None:
    refused = s_client(hosts, "-tls1_2", "-cipher", cipher)
    assert refused.returncode != 0, refused.stdout[-2000:]


@pytest.mark.parametrize(("version", "cipher"), [("-tls1_2", "ECDHE-RSA-AES128-GCM-SHA256"), ("-tls1_3", "")])
def test_the_load_balancer_speaks_forward_secret_aead_tls(
    fleet: dict, hosts: TestHosts, version: str, cipher: str
) -> None:
    accepted = s_client(hosts, version, *(["-cipher", cipher] if cipher else []))
    assert accepted.returncode == 0, accepted.stdout[-2000:] + accepted.stderr[-2000:]
    assert "Verify return code: 0 (ok)" in accepted.stdout


def test_haproxy_workers_run_unprivileged(fleet: dict, hosts: TestHosts) -> None:
    config = f"{hosts.hosts['a'].prefix}/etc/haproxy/haproxy.cfg"
    listing = hosts.ssh("a", "ps -eo user:20=,pid=,ppid=,args=").stdout.splitlines()
    processes = [line.split(None, 3) for line in listing if config in line and "haproxy" in line]
    pids = {pid for _, pid, _, _ in processes}
    masters = [user for user, _, ppid, _ in processes if ppid not in pids]
    workers = [user for user, _, ppid, _ in processes if ppid in pids]
    assert masters == ["root"], processes  # binds the ports, reads the certificates, re-executes on reload
    assert workers, processes
    assert set(workers) == {"haproxy"}, processes  # every connection is handled unprivileged


def test_no_host_holds_the_fleet_ca_key(fleet: dict, hosts: TestHosts) -> None:
    ca = hosts.workdir / "fleet-ca"

    def public_key(*argv: str) -> str:
        return subprocess.run(["openssl", *argv], capture_output=True, text=True, check=True).stdout

    ca_public = public_key("x509", "-in", str(ca / "ca.pem"), "-noout", "-pubkey")
    keys = []
    for name in ("a", "b"):
        for top in ("etc", "var"):
            for path in (hosts.hosts[name].prefix / top).rglob("*"):
                small = path.is_file() and not path.is_symlink() and path.stat().st_size < 1_000_000
                if small and b"PRIVATE KEY-----" in path.read_bytes():
                    keys.append(path)
    assert {path.name for path in keys} == {"runtime.key", "haproxy.pem"}, keys  # each host's own only
    for path in keys:
        assert public_key("pkey", "-in", str(path), "-pubout") != ca_public, path
    assert (ca / "ca.key").exists()  # on the control node, outside every host's files


def test_instances_speak_only_tls_with_their_host_certificate(fleet: dict, hosts: TestHosts) -> None:
    address = hosts.hosts["b"].address
    with hosts.network_of("a"):
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://{address}:{PORT}/health/ready", timeout=10)
        # The name HAProxy checks (the inventory name), signed by the fleet CA.
        with (
            socket.create_connection((address, PORT), timeout=10) as raw,
            fleet_tls(hosts).wrap_socket(raw, server_hostname="b") as conn,
        ):
            assert conn.version() in ("TLSv1.2", "TLSv1.3")


# An instance's port, and its internal listener's (metrics, admin: for monitoring hosts only, none here).
@pytest.mark.parametrize(("port", "from_the_load_balancer"), [(PORT, True), (METRICS_PORT, False)])
def test_only_the_load_balancer_reaches_the_instances(
    fleet: dict, hosts: TestHosts, port: int, from_the_load_balancer: bool
) -> None:
    address = hosts.hosts["b"].address
    with hosts.network_of("b"):
        assert connects(address, port)  # the host itself: the port is open, on the private address
    with hosts.network_of("old"):
        assert not connects(address, port)  # a third host on the LAN
    assert not connects(address, port)  # the control node
    with hosts.network_of("a"):
        assert connects(address, port) == from_the_load_balancer


def corrupt_copy(model: Path, target: Path, version: str) -> Path:
    """The model as another version whose weights lost a byte after its manifest was written: a copy
    that the model_artifacts role refuses before anything is drained."""
    shutil.copytree(model, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["version"] = version
    (target / "manifest.json").write_text(json.dumps(manifest))
    weights = target / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    return target


def test_corrupt_model_version_is_refused_and_the_previous_keeps_serving(
    fleet: dict, hosts: TestHosts, tmp_path: Path
) -> None:
    before = json.loads((fleet["model"] / "manifest.json").read_text())["version"]
    broken = corrupt_copy(fleet["model"], tmp_path / "demo-broken", "broken-1")

    run = playbook("deploy.yml", fleet["inventory"], {"model_artifacts_source": str(broken)}, "--limit", "a")
    assert run.returncode != 0
    assert "model.safetensors" in run.output
    assert "was refused and not installed" in run.output
    models = hosts.hosts["a"].prefix / "var/lib/model-runtime/models/demo"
    assert (models / "current").resolve().name == before
    assert not (models / "broken-1").exists()
    assert not (models / ".broken-1.partial").exists()
    with hosts.network_of("a"):
        served = api(hosts, LB, PORT).models.list()
    assert served.data[0].model_extra["version"] == before


def test_unsupported_os_stops_before_any_change(hosts: TestHosts, demo_model: Path, tmp_path: Path) -> None:
    inventory = hosts.inventory(
        tmp_path / "hosts.yml", {"gpu_servers": ["old"], "loadbalancers": ["old"]},
        fleet_vars(hosts, KEY, ensure_wheelhouse(), demo_model),
    )  # fmt: skip
    run = playbook("site.yml", inventory)
    assert run.returncode != 0
    assert "unsupported OS Debian 10" in run.output
    assert run.changed() == 0
    assert list(hosts.hosts["old"].prefix.iterdir()) == []


def test_too_little_disk_stops_before_any_change(hosts: TestHosts, demo_model: Path, tmp_path: Path) -> None:
    inventory = hosts.inventory(
        tmp_path / "hosts.yml", {"gpu_servers": ["small"], "loadbalancers": ["small"]},
        fleet_vars(hosts, KEY, ensure_wheelhouse(), demo_model),
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
        with hosts.network_of("a"):  # the load balancer's host: the firewall lets it in
            served = api(hosts, hosts.hosts[name].address, PORT).models.list()
        assert served.data[0].model_extra["version"] == version
        kept = json.loads(
            (
                hosts.hosts[name].prefix / f"var/lib/model-runtime/models/demo/{version}/manifest.json"
            ).read_text()
        )
        assert all("url" not in entry for entry in kept["files"])  # fetch URLs are not part of the version
    # The fleet pins what it runs (and may roll back to), so that the registry's gc keeps it: a second
    # version it does not run is collected, the pinned one stays, though no alias reaches it any more.
    registry_of = Registry.open(str(registry))
    (pinned,) = registry_of.pins("demo").values()
    assert version in pinned, pinned
    newer = registry_of.push("demo", fleet["model"])["version"]
    registry_of.promote("demo", newer, "stable")
    registry_of.store.delete("demo/aliases/stable.json")
    assert registry_of.gc("demo", keep=0) == [newer]
    assert registry_of.versions("demo") == [version]


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
    assert re.search(r"^a\s+1\s+\S+\s+auto\s+demo@", table.stdout, re.MULTILINE)  # runtime, engine, model
    assert re.search(r"^b\s+1\s+\S+\s+auto\s+demo@", table.stdout, re.MULTILINE)
    assert re.search(r"^a\s+1\s.*\sUP$", table.stdout, re.MULTILINE), table.stdout  # at the load balancer
    data = json.loads(fab(fleet, "status", "--json").stdout)
    assert {(row["host"], row["balancers"]) for row in data["instances"]} == {("a", "UP"), ("b", "UP")}


def test_fab_logs(fleet: dict) -> None:
    logs = fab(fleet, "logs", "--host", "a", "--lines", "5")
    assert logs.returncode == 0, logs.stderr
    assert "==> a instance 1 <==" in logs.stdout
    assert '"logger"' in logs.stdout


def lb_states(fleet: dict) -> dict[str, str]:
    stats = host(fleet, "a").ansible(
        "uri", f"url=http://127.0.0.1:{STATS_PORT}/stats;csv return_content=true", check=False
    )
    return {row["svname"]: row["status"] for row in model_server_rows(stats["content"], "model_runtime")}


def test_fab_drain_and_enable(fleet: dict) -> None:
    # While another run holds the fleet's lock, Fabric's state-changing tasks change nothing.
    held = FleetLock(Path(fleet["inventory"]).parent / LOCK_NAME)
    held.acquire(holder_of("upgrade.yml", {"MODEL_RUNTIME_RUN_ID": "manual-upgrade-3"}))
    try:
        refused = fab(fleet, "drain", "b")
    finally:
        held.release()
    assert refused.returncode != 0
    assert "is held by run manual-upgrade-3 (upgrade.yml" in refused.stdout + refused.stderr
    assert lb_states(fleet)["b-1"] == "UP"
    drained = fab(fleet, "drain", "b")
    assert drained.returncode == 0, drained.stdout[-3000:] + drained.stderr
    assert "b-1: DRAIN at a, 0 sessions" in drained.stdout
    assert lb_states(fleet)["b-1"] == "DRAIN"
    enabled = fab(fleet, "enable", "b")  # returns once the health check passes (pool.yml waits for it)
    assert enabled.returncode == 0, enabled.stdout[-3000:] + enabled.stderr
    assert "b-1: UP at a" in enabled.stdout
    assert lb_states(fleet)["b-1"] == "UP"


def test_fab_rolling_restart(fleet: dict, hosts: TestHosts) -> None:
    def pids() -> dict[str, str]:
        return {name: hosts.ssh(name, f"pgrep -u mrt-{name} -f 'model-runtime serve'").stdout.split()[0]
                for name in ("a", "b")}  # fmt: skip

    before = pids()
    restarted = fab(fleet, "restart", "--rolling")  # restart.yml: the rolling cycle, smoke test included
    assert restarted.returncode == 0, restarted.stdout[-3000:] + restarted.stderr
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
        with hosts.network_of("a"):  # the load balancer's host: the firewall lets it in
            client = api(hosts, hosts.hosts[name].address, PORT)
            return client.completions.create(model="demo", prompt="Hi", max_tokens=1).system_fingerprint

    assert version("a").startswith(f"model-runtime-{fleet['next_runtime']}:")
    assert not version("b").startswith(f"model-runtime-{fleet['next_runtime']}:")


def release_record(hosts: TestHosts, name: str) -> dict:
    return json.loads((hosts.hosts[name].prefix / "etc/ansible/facts.d/model_runtime.fact").read_text())


def test_an_upgrade_failing_in_its_second_batch_puts_back_what_it_changed_and_drops_nothing(
    fleet: dict, hosts: TestHosts, tmp_path: Path
) -> None:
    """Batches of one host, no failure allowed: a takes a new model version; b's copy of it is corrupt
    and refused there before anything is drained. The run stops past its budget and puts back what it
    changed (a, through the same drain, ready and smoke gates), under constant load through HAProxy."""
    v2 = model_copy(fleet["model"], tmp_path / "v2", "v2")
    broken = corrupt_copy(fleet["model"], tmp_path / "v2-corrupt", "v2")
    tree = yaml.safe_load(fleet["inventory"].read_text())
    servers = tree["all"]["children"]["gpu_servers"]["hosts"]
    servers["a"]["model_artifacts_source"], servers["b"]["model_artifacts_source"] = str(v2), str(broken)
    inventory = fleet["inventory"].with_name("hosts-v2.yml")  # beside it: the same fleet, the same lock
    inventory.write_text(yaml.safe_dump(tree, sort_keys=False))
    before = {name: release_record(hosts, name) for name in ("a", "b")}
    load = Load(f"https://{LB}:{LB_PORT}", completions("demo"), 2, KEY, fleet_tls(hosts), pause_s=0.25)
    with load as traffic:
        traffic.wait_for(10)
        run = playbook("upgrade.yml", inventory, {"batch": "1", "max_fail": 0})
        traffic.wait_for(len(traffic.outcomes) + 10)
    inventory.unlink()
    said = re.sub(r"\s+", " ", run.output)  # the YAML results fold long lines
    assert run.returncode != 0
    assert re.search(r"\bb: .* failed: ", said), run.output[-5000:]
    assert "was refused and not installed" in said
    assert "The run stopped past its failure budget (failed hosts in that batch: 1)" in said
    assert "put back every instance it had changed" in said
    assert re.search(r"cycle: a-1 .*cycle: a-1 ", said)  # rolled, then undone
    assert traffic.failures == [], traffic.failures[:3]
    after = {name: release_record(hosts, name) for name in ("a", "b")}
    assert after["b"] == before["b"]  # its failed roll recorded nothing
    a_now, a_before = after["a"]["instances"]["1"], before["a"]["instances"]["1"]
    assert a_now["model_version"] == a_before["model_version"] != "v2"
    assert a_now["runtime_version"] == a_before["runtime_version"]
    # What it went back from is the run's v2, and the undo is a run of its own, named after it.
    assert after["a"]["previous"]["1"]["model_version"] == "v2"
    assert a_now["run"] == after["a"]["previous"]["1"]["run"] + "-undo"
    assert lb_states(fleet) == {"a-1": "UP", "b-1": "UP"}


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
