"""`model-runtime doctor`, one check at a time, on real files: a sysfs-shaped PCI tree, a copy of the demo
model with its manifest (and a corrupted copy), this machine's filesystem and torch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from harness.server import free_port
from model_runtime import __version__
from model_runtime.cli import main
from model_runtime.config import Settings
from model_runtime.doctor import (
    Check,
    Limits,
    check_disk,
    check_driver,
    check_manifest,
    check_ready,
    check_torch_gpu,
    check_version,
    instance_url,
    nvidia_devices,
    overall,
    report,
    report_from_output,
)
from model_runtime.registry.manifest import build_manifest, write_manifest

pytestmark = pytest.mark.unit


def settings(**model: object) -> Settings:
    return Settings.model_validate({"model": {"path": "unused", **model}})


def pci_tree(root: Path, vendors: dict[str, str]) -> Path:
    """The layout of /sys/bus/pci/devices: one folder per device address with its vendor id."""
    for address, vendor in vendors.items():
        (root / address).mkdir(parents=True)
        (root / address / "vendor").write_text(f"{vendor}\n")
    return root


@pytest.fixture
def model_copy(demo_model: Path, tmp_path: Path) -> Path:
    folder = shutil.copytree(demo_model, tmp_path / "demo", ignore=shutil.ignore_patterns("manifest.json"))
    write_manifest(folder, build_manifest(folder, "demo", "v1"))
    return folder


def test_nvidia_devices_are_read_from_the_pci_vendor_ids(tmp_path: Path) -> None:
    tree = pci_tree(tmp_path, {"0000:00:02.0": "0x8086", "0000:3b:00.0": "0x10de", "0000:5e:00.0": "0x10DE"})
    assert nvidia_devices(tree) == ["0000:3b:00.0", "0000:5e:00.0"]
    assert nvidia_devices(pci_tree(tmp_path / "none", {"0000:00:02.0": "0x8086"})) == []
    assert nvidia_devices(tmp_path / "no-sysfs") == []


def test_no_gpu_skips_the_driver_and_torch_checks() -> None:
    assert check_driver([], None, 5).status == "skip"
    assert check_torch_gpu([], "auto").status == "skip"


def test_a_gpu_without_a_working_driver_fails(tmp_path: Path) -> None:
    missing = check_driver(["0000:3b:00.0"], None, 5)
    assert missing.status == "fail"
    assert "no nvidia-smi" in missing.detail
    broken = check_driver(["0000:3b:00.0"], shutil.which("false"), 5)
    assert broken.status == "fail"
    assert "exited 1" in broken.detail


@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="needs an NVIDIA driver")
def test_the_driver_answers_for_every_gpu_on_the_bus() -> None:
    result = check_driver(nvidia_devices(), shutil.which("nvidia-smi"), 30)
    assert result.status == "ok", result.detail


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch that sees no GPU")
def test_a_gpu_that_torch_cannot_see_fails() -> None:
    result = check_torch_gpu(["0000:3b:00.0"], "auto")
    assert result.status == "fail"
    assert torch.__version__ in result.detail
    assert check_torch_gpu(["0000:3b:00.0"], "cpu").status == "skip"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_torch_sees_the_gpus() -> None:
    result = check_torch_gpu(nvidia_devices(), "auto")
    assert result.status == "ok", result.detail
    assert torch.cuda.get_device_name(0) in result.detail


def test_version_installed_and_running() -> None:
    url = "http://127.0.0.1:8101"
    assert check_version(__version__, None, url).status == "ok"
    assert check_version(__version__, __version__, url).status == "ok"
    stale = check_version(__version__, "0.0.1", url)
    assert stale.status == "warn"
    assert "runs 0.0.1" in stale.detail
    assert check_version("9.9.9", None, url).status == "warn"  # the code and its package disagree


def test_the_model_folder_matches_its_manifest(model_copy: Path) -> None:
    result = check_manifest(settings(path=str(model_copy)))
    assert result.status == "ok", result.detail
    assert "demo v1" in result.detail


def test_a_corrupted_copy_fails_naming_the_file(model_copy: Path) -> None:
    weights = model_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    weights.write_bytes(bytes(data))
    result = check_manifest(settings(path=str(model_copy)))
    assert result.status == "fail"
    assert "model.safetensors: sha256 does not match" in result.detail


def test_a_missing_file_or_manifest(model_copy: Path, tmp_path: Path) -> None:
    (model_copy / "tokenizer.json").unlink()
    missing = check_manifest(settings(path=str(model_copy)))
    assert missing.status == "fail"
    assert "tokenizer.json: missing" in missing.detail
    (model_copy / "manifest.json").unlink()
    assert check_manifest(settings(path=str(model_copy))).status == "warn"
    assert check_manifest(settings(path=str(tmp_path / "nowhere"))).status == "fail"
    assert check_manifest(settings(path="registry:demo@stable")).status == "skip"


def test_free_disk_against_the_thresholds(tmp_path: Path) -> None:
    below_nothing = check_disk(tmp_path / "not-yet" / "model", Limits(min_free_gb=0, fail_free_gb=0))
    assert below_nothing.status == "ok"
    assert str(tmp_path) in below_nothing.detail  # measured where the path would be
    assert check_disk(tmp_path, Limits(min_free_gb=1e9, fail_free_gb=0)).status == "warn"
    assert check_disk(tmp_path, Limits(min_free_gb=1e9, fail_free_gb=1e9)).status == "fail"


def test_nothing_listening_is_a_failure() -> None:
    result = check_ready(f"http://127.0.0.1:{free_port()}", 2)
    assert result.status == "fail"
    assert "nothing answers" in result.detail


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8101"),
        ("::", "http://[::1]:8101"),
        ("10.20.1.11", "http://10.20.1.11:8101"),
        ("fd00::5", "http://[fd00::5]:8101"),
        ("gpu-a01.example.internal", "http://gpu-a01.example.internal:8101"),
    ],
)
def test_the_instance_is_reached_where_it_listens(host: str, url: str) -> None:
    configured = Settings.model_validate({"model": {"path": "x"}, "server": {"host": host, "port": 8101}})
    assert instance_url(configured) == url


def test_the_worst_check_decides() -> None:
    def checks(*statuses: str) -> list[Check]:
        return [Check(f"c{i}", status, "") for i, status in enumerate(statuses)]  # type: ignore[arg-type]

    assert overall(checks("ok", "skip")) == "ok"
    assert overall(checks("ok", "warn", "skip")) == "warn"
    assert overall(checks("warn", "fail", "ok")) == "fail"


def test_bad_settings_are_a_failing_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "instance-1.yaml"
    config.write_text(yaml.safe_dump({"model": {"path": str(tmp_path)}, "server": {"prot": 8101}}))
    assert main(["doctor", "--config", str(config)]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "fail"
    assert report["checks"][0]["name"] == "settings"
    assert "server.prot: unknown key" in report["checks"][0]["detail"]


def test_a_remote_report_is_read_past_warnings_and_its_absence_is_a_failure() -> None:
    printed = json.dumps(report([Check("disk_free", "warn", "9.0 GiB free")]), indent=2)
    output = "UserWarning: {something} from an import\n" + printed + "\n"
    assert report_from_output(output)["status"] == "warn"
    missing = report_from_output("model-runtime: error: argument command: invalid choice: 'doctor'\n")
    assert missing["status"] == "fail"
    assert "invalid choice" in missing["checks"][0]["detail"]
    assert report_from_output("")["checks"][0]["detail"] == "no report: no output"
