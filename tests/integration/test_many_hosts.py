"""A dozen serving hosts over SSH (harness.host_fleet: network namespaces, one demo instance each, a load
balancer host of their own), set up by site.yml, then rolled in batches under constant load through the
load balancer, plain and streamed: a batched upgrade that drops nothing; an upgrade whose release breaks
one host of its second batch, stopped there and undone exactly where it had changed something; two runs
started together, one of them refused with the holder's name; a driver upgrade whose new driver fails its
checks, undone on its host by the driver before; a scheduled run that reads the fleet's key from an
encrypted vault; a registry gc that keeps the version the fleet runs. The fleet-scale group
(`-m many_hosts`)."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from callback_plugins.fleet_lock import LOCK_HELD
from harness.fleet import model_copy
from harness.host_fleet import HostFleet
from harness.playbooks import playbook_command, playbook_environment
from harness.standin_driver import KEEPS_REAL_DRIVER, REAL_DRIVER, VERSION_FILE, StandinDriver
from model_runtime.registry.registry import Registry

pytestmark = [
    pytest.mark.integration,
    pytest.mark.many_hosts,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and sshd need root"),
]

HOSTS = 12
# One host, then quarters of the fleet: batches of 1, 3, 3, 3 and 2 hosts.
QUARTERS = "1,25%"


@pytest.fixture(scope="module")
def fleet(demo_model: Path):
    with HostFleet(demo_model, size=HOSTS) as made:
        made.site = made.run("site.yml")
        yield made


def said(run) -> str:
    return re.sub(r"\s+", " ", run.output)  # the YAML results fold long lines


# A host in a batch of the roll: it skips the play's first task, a meta task, which Ansible heads once per
# host (the batches after a stop run it instead, and end there).
ROLLING_HOST = re.compile(
    r"TASK \[Leave the host as it is once the run has stopped\] \**\nskipping: \[(\S+)\]"
)


def batches(run) -> list[list[str]]:
    """The hosts of each batch that rolled, in order: each batch is a PLAY of its own."""
    plays = run.output.split("PLAY [Roll the release through the GPU servers]")[1:]
    found = [ROLLING_HOST.findall(play.split("PLAY [", 1)[0]) for play in plays]
    return [batch for batch in found if batch]


def with_host_vars(fleet: HostFleet, host_vars: dict[str, dict], label: str) -> Path:
    """The fleet's inventory with more variables for some hosts (name -> variables), written beside it:
    the same fleet, the same lock."""
    tree = yaml.safe_load(fleet.inventory.read_text())
    for name, more in host_vars.items():
        tree["all"]["children"]["gpu_servers"]["hosts"][name].update(more)
    inventory = fleet.inventory.with_name(f"hosts-{label}.yml")
    inventory.write_text(yaml.safe_dump(tree, sort_keys=False))
    return inventory


def test_site_sets_up_every_host_behind_the_load_balancer(fleet: HostFleet) -> None:
    assert fleet.site.returncode == 0, fleet.site.output[-5000:]
    assert set(fleet.site.recap()) == {"lb", *fleet.names}
    assert fleet.server_states() == {f"{name}-1": "UP" for name in fleet.names}
    releases = fleet.releases()
    assert {release[:3] for release in releases.values()} == {(fleet.old_runtime, fleet.old_model, "serving")}
    assert len({release[3] for release in releases.values()}) == 1  # one run set them all up


def test_a_batched_upgrade_drops_no_request(fleet: HostFleet) -> None:
    with fleet.load() as traffic:
        traffic.wait_for(20)
        run = fleet.run("upgrade.yml", {"model_runtime_version": fleet.new_runtime, "batch": "1,25%,50%"})
        traffic.wait_for(len(traffic.outcomes) + 20)
    assert run.returncode == 0, run.output[-5000:]
    assert [len(batch) for batch in batches(run)] == [1, 3, 6, 2]
    assert traffic.failures == [], traffic.failures[:3]
    assert any(outcome.stream for outcome in traffic.outcomes)
    releases = fleet.releases()
    assert {release[:3] for release in releases.values()} == {(fleet.new_runtime, fleet.old_model, "serving")}
    assert len({release[3] for release in releases.values()}) == 1  # one run id, in every record it changed
    assert fleet.server_states() == {f"{name}-1": "UP" for name in fleet.names}
    served = {o.fingerprint.split(":")[0] for o in traffic.outcomes[-10:]}
    assert served == {f"model-runtime-{fleet.new_runtime}"}


def test_a_release_that_breaks_in_the_second_batch_is_undone_where_it_changed_and_nowhere_else(
    fleet: HostFleet, tmp_path: Path
) -> None:
    """A new model version whose copy on h03 (the second batch's middle host) installs but never becomes
    ready: h03's instance goes back by itself, h02 and h04 beside it took the version, the run stops past
    its budget (no failure allowed) and puts back h04, h02 and h01 in that order, through the same gates;
    the hosts after the second batch are never touched. No request fails meanwhile."""
    good = model_copy(fleet.demo_model, tmp_path / "v2", "v2")
    broken = model_copy(fleet.demo_model, tmp_path / "v2-broken", "v2", break_weights=True)
    sources = {
        name: {"model_artifacts_source": str(broken if name == "h03" else good)} for name in fleet.names
    }
    inventory = with_host_vars(fleet, sources, "v2")
    before = {name: fleet.record(name) for name in fleet.names}
    with fleet.load() as traffic:
        traffic.wait_for(20)
        run = fleet.run("upgrade.yml", {"batch": QUARTERS, "max_fail": 0}, inventory=inventory)
        traffic.wait_for(len(traffic.outcomes) + 20)
    inventory.unlink()
    print(run.output)  # pytest shows it when the test fails
    text = said(run)
    assert run.returncode != 0
    assert [sorted(batch) for batch in batches(run)] == [["h01"], ["h02", "h03", "h04"]]
    assert "h03 instance 1 failed at step ready: the instance stopped for good" in text, run.output[-5000:]
    assert "The run stopped past its failure budget (failed hosts in that batch: 1)" in text
    assert "put back every instance it had changed" in text
    undone = re.findall(r"cycle: (h0\d)-1 ", text.split("PLAY [Put back what the run changed]", 1)[1])
    # Hosts in reverse order, in the same batches: h04 first, then h02 and h01 (one batch, in parallel).
    assert sorted(undone) == ["h01", "h02", "h04"], undone
    assert undone[0] == "h04"
    assert traffic.failures == [], traffic.failures[:3]
    after = {name: fleet.record(name) for name in fleet.names}
    for name in fleet.names[4:]:
        assert after[name] == before[name], name  # never touched
    for name in fleet.names[:4]:
        instance, was = after[name]["instances"]["1"], before[name]["instances"]["1"]
        assert (instance["runtime_version"], instance["model_version"], instance["state"]) == (
            was["runtime_version"], was["model_version"], "serving",
        ), name  # fmt: skip
    run_id = after["h01"]["previous"]["1"]["run"]
    for name in ("h01", "h02", "h04"):
        assert after[name]["previous"]["1"]["model_version"] == "v2"  # what the undo went back from
        assert after[name]["instances"]["1"]["run"] == f"{run_id}-undo"
    assert fleet.server_states() == {f"{name}-1": "UP" for name in fleet.names}


def test_two_runs_started_together_one_refused_naming_the_holder(fleet: HostFleet) -> None:
    """Two upgrades (to the release every host already runs: nothing to roll) started at once, neither
    willing to wait for the fleet's lock: one runs, the other changes nothing and names the holder."""
    runs = {}
    for run_id in ("together-1", "together-2"):
        env = playbook_environment({"MODEL_RUNTIME_RUN_ID": run_id, "MODEL_RUNTIME_FLEET_LOCK_WAIT": "0"})
        command = playbook_command(
            "upgrade.yml", fleet.inventory, {"model_runtime_version": fleet.new_runtime}
        )
        runs[run_id] = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)  # fmt: skip
    outputs = {run_id: process.communicate(timeout=1800)[0] for run_id, process in runs.items()}
    codes = {run_id: process.returncode for run_id, process in runs.items()}
    assert sorted(codes.values()) == [0, LOCK_HELD], outputs
    winner = next(run_id for run_id, code in codes.items() if code == 0)
    loser = next(run_id for run_id, code in codes.items() if code == LOCK_HELD)
    assert f"is held by run {winner} (upgrade.yml" in outputs[loser]
    assert "PLAY RECAP" not in outputs[loser]  # it ran no play


def test_a_scale_run_in_batches_drops_no_request(fleet: HostFleet) -> None:
    """Half the instances out, a quarter of the hosts at a time (the hosts after the sixth drain, in two
    batches), then all back in the same batches, under load."""
    with fleet.load() as traffic:
        traffic.wait_for(20)
        inward = fleet.run("scale.yml", {"replicas": HOSTS // 2, "batch": "25%"})
        scaled_in, states_in = fleet.releases(), fleet.server_states()
        outward = fleet.run("scale.yml", {"replicas": HOSTS, "batch": "25%"})
        traffic.wait_for(len(traffic.outcomes) + 20)
    assert inward.returncode == 0, inward.output[-5000:]
    assert outward.returncode == 0, outward.output[-5000:]
    for run in (inward, outward):  # four batches of three hosts, for the starts and for the stops
        assert run.output.count("PLAY [Bring the added instances into service") == 4
        assert run.output.count("PLAY [Take the removed instances out of service]") == 4
    serving, out = fleet.names[: HOSTS // 2], fleet.names[HOSTS // 2 :]
    assert [scaled_in[name][2] for name in fleet.names] == ["serving"] * len(serving) + ["scaled-in"] * len(
        out
    )
    assert all(states_in[f"{name}-1"] == "UP" for name in serving)
    assert not any(states_in[f"{name}-1"] == "UP" for name in out)
    assert {release[2] for release in fleet.releases().values()} == {"serving"}
    assert fleet.server_states() == {f"{name}-1": "UP" for name in fleet.names}
    assert traffic.failures == [], traffic.failures[:3]


GOOD, BROKEN = "575.51.03", "580.65.06"


@pytest.mark.skipif(REAL_DRIVER, reason=KEEPS_REAL_DRIVER)
def test_a_driver_that_fails_its_checks_gives_way_to_the_one_before(fleet: HostFleet) -> None:
    """The last host has a GPU (a stand-in driver, real packages from a mirror its apt sources name, on
    this machine's dpkg: one host only). Under load, its first driver (570.133.20) goes in, then
    575.51.03, then 580.65.06, whose nvidia-smi cannot reach the driver: the run puts 575.51.03 back, the
    host's instance comes back on it through the same gates, and the run stops naming the failure. No
    request fails; no other host is touched."""
    gpu_host = fleet.gpu_host
    stand_in_gpu = {
        "nvidia_driver_gpu_override": True,
        "nvidia_driver_source": "mirror",
        "nvidia_driver_cuda_packages": [],
        "nvidia_driver_loaded_version_path": str(VERSION_FILE),
    }
    inventory = with_host_vars(fleet, {gpu_host: stand_in_gpu}, "gpu")
    others = {name: fleet.record(name) for name in fleet.names[:-1]}
    with StandinDriver({"570.133.20": True, GOOD: True, BROKEN: False}, fleet.gpu_apt_sources) as driver:
        with fleet.load() as traffic:
            traffic.wait_for(20)
            first = fleet.run(
                "driver-upgrade.yml", {"nvidia_driver_version": "570.133.20"}, inventory=inventory
            )
            upgraded = fleet.run("driver-upgrade.yml", {"nvidia_driver_version": GOOD}, inventory=inventory)
            upgraded_record = fleet.record(gpu_host)
            failed = fleet.run("driver-upgrade.yml", {"nvidia_driver_version": BROKEN}, inventory=inventory)
            traffic.wait_for(len(traffic.outcomes) + 20)
        installed, loaded = driver.installed(), driver.loaded()
    inventory.unlink()
    print(failed.output)  # pytest shows it when the test fails
    assert first.returncode == 0, first.output[-5000:]
    assert upgraded.returncode == 0, upgraded.output[-5000:]
    assert (upgraded_record["driver_version"], upgraded_record["previous_driver_version"]) == (
        "575.51.03", "570.133.20",
    )  # fmt: skip
    assert failed.returncode != 0
    assert (
        f"NVIDIA driver 580.65.06 failed its checks on {gpu_host} (the NVIDIA driver did not come up on "
        f"{gpu_host}: nvidia-smi said NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
        "driver." in said(failed)
    )
    back = "the host is back on driver 575.51.03 and its instances serve again: the run stops here"
    assert back in said(failed)
    assert installed == {"cuda-drivers-575": "575.51.03-1", "nvidia-persistenced": "575.51.03-1"}
    assert loaded == "575.51.03"
    assert fleet.record(gpu_host)["driver_version"] == "575.51.03"
    assert fleet.record(gpu_host)["instances"]["1"]["state"] == "serving"
    assert {name: fleet.record(name) for name in fleet.names[:-1]} == others
    assert traffic.failures == [], traffic.failures[:3]
    assert fleet.server_states() == {f"{name}-1": "UP" for name in fleet.names}


def test_a_scheduled_run_reads_the_fleets_key_from_an_encrypted_vault(fleet: HostFleet) -> None:
    """The control node (this machine) gets a nightly schedule that scales the fleet in by three
    instances, with a vault password file root's alone; the fleet's API key then moves into an encrypted
    group_vars/all/vault.yml beside the inventory, as the README advises. The schedule's cron command, run
    as cron would under load, opens the vault, scales in the last three hosts (the smoke tests and the
    load balancer's checks use the key), drops nothing, and logs and reports no secret."""
    folder = fleet.inventory.parent
    control = fleet.root / "control"
    password = fleet.root / "vault-password"
    password.touch(mode=0o600)
    password.write_text(secrets.token_hex(16) + "\n")
    control_inventory = folder / "control.yml"
    nightly = {"name": "nightly", "kind": "scale", "cron": "0 22 * * *", "replicas": HOSTS - 3}
    control_node = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "control_node_prefix": str(control),
        "control_node_vault_password_file": str(password),
        "fleet_schedules": [nightly],
    }
    control_inventory.write_text(
        yaml.safe_dump({"all": {"children": {"control": {"hosts": {"localhost": control_node}}}}})
    )
    vault = folder / "group_vars" / "all" / "vault.yml"
    try:
        installed = fleet.run("control.yml", inventory=folder)
        assert installed.returncode == 0, installed.output[-5000:]
        cron = (control / "etc/cron.d/model-runtime-schedules").read_text()
        (job,) = re.findall(r"#Ansible: model-runtime nightly\n(.+)", cron)
        assert job.startswith("0 22 * * * root ")
        assert job.endswith(f" scale.yml -e replicas={HOSTS - 3}")
        vault.parent.mkdir(parents=True)
        vault.write_text(yaml.safe_dump({"model_runtime_api_keys": [fleet.key]}))
        subprocess.run([Path(sys.executable).with_name("ansible-vault"), "encrypt", "--vault-password-file",
                        password, vault], check=True, capture_output=True)  # fmt: skip
        assert fleet.key not in vault.read_text()
        with fleet.load() as traffic:
            traffic.wait_for(20)
            done = subprocess.run(job.split(None, 6)[6], shell=True, capture_output=True, text=True,  # noqa: S602
                                  check=False)  # fmt: skip
            traffic.wait_for(len(traffic.outcomes) + 20)
    finally:
        vault.unlink(missing_ok=True)
        control_inventory.unlink()
    log = (control / "var/log/model-runtime/schedules/nightly.log").read_text()
    assert done.returncode == 0, log[-5000:]
    assert "exit 0" in log
    assert fleet.key not in log
    metrics = (control / "var/lib/prometheus/node-exporter/fleet-run-nightly.prom").read_text()
    assert 'model_runtime_scheduled_run_exit_code{schedule="nightly",playbook="scale.yml"} 0' in metrics
    states = [state for _, _, state, _ in fleet.releases().values()]
    assert states == ["serving"] * (HOSTS - 3) + ["scaled-in"] * 3
    assert traffic.failures == [], traffic.failures[:3]


def registry_cli(registry: Path, *args: str) -> str:
    """An operator's `model-runtime registry` command on the fleet's registry: its output."""
    return subprocess.run(
        [sys.executable, "-m", "model_runtime", "registry", "--registry", str(registry), *args],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def push_stable(registry: Path, folder: Path) -> str:
    """Push a model folder as a new version of demo, made demo@stable: the version."""
    said = registry_cli(registry, "push", "demo", str(folder), "--alias", "stable")  # demo:VERSION -> @stable
    return said.split(":", 1)[1].split()[0]


def test_gc_keeps_the_version_the_fleet_runs(fleet: HostFleet) -> None:
    """The model from a registry by alias: an upgrade to demo@stable under load puts the pushed version on
    every host (the scaled-in ones too) and pins it for the fleet. A newer version is pushed and made
    stable without being rolled out, then the alias goes: gc, keeping none by age, removes the newer
    version alone; the one the fleet runs stays, though nothing but the fleet's pin reaches it."""
    registry = fleet.root / "registry"
    version = push_stable(registry, fleet.demo_model)
    with fleet.load() as traffic:
        traffic.wait_for(20)
        run = fleet.run(
            "upgrade.yml",
            {"model": "demo@stable", "model_artifacts_registry": str(registry), "batch": QUARTERS},
        )
        traffic.wait_for(len(traffic.outcomes) + 20)
    assert run.returncode == 0, run.output[-5000:]
    assert traffic.failures == [], traffic.failures[:3]
    assert {release[1] for release in fleet.releases().values()} == {version}
    newer = push_stable(registry, fleet.demo_model)
    Registry.open(str(registry)).store.delete("demo/aliases/stable.json")
    collected = registry_cli(registry, "gc", "demo", "--keep", "0")
    assert f"kept for fleet-inventory: demo:{version}" in collected, collected
    assert collected.endswith(f"removed demo:{newer}\n"), collected
    assert Registry.open(str(registry)).versions("demo") == [version]
