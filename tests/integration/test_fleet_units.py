"""The service units of the fleet's other services (exporters, Prometheus and Alertmanager, the
autoscaler, the CloudWatch publisher), rendered from the roles' templates and checked with
systemd-analyze: valid, hardened, and for the DCGM exporter (which runs only where there is a GPU) a
counters file in the exporter's format."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.render import render, stand_in

pytestmark = pytest.mark.integration

UNITS = (
    "model-runtime-node-exporter.service",
    "model-runtime-dcgm-exporter.service",
    "model-runtime-prometheus.service",
    "model-runtime-alertmanager.service",
    "fleet-autoscaler.service",
    "cloudwatch-publisher.service",
)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("units")
    stand_ins = tmp_path_factory.mktemp("bin")
    for name in ("prometheus-node-exporter", "dcgm-exporter", "prometheus", "prometheus-alertmanager",
                 "python", "python3"):  # fmt: skip
        stand_in(stand_ins / name)
    render("render_fleet_units.yml", out_dir=out, bin=stand_ins)
    return out


@pytest.mark.parametrize("unit", UNITS)
def test_each_unit_is_valid_and_hardened(rendered: Path, unit: str) -> None:
    text = (rendered / unit).read_text()
    assert "NoNewPrivileges=yes" in text or unit == "fleet-autoscaler.service"  # it runs ansible-playbook
    assert "Restart=always" in text
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(rendered / unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    assert [line for line in verify.stderr.splitlines() if unit in line] == []


def test_only_the_dcgm_exporter_may_reach_the_gpus(rendered: Path) -> None:
    assert "PrivateDevices=yes" in (rendered / "model-runtime-node-exporter.service").read_text()
    assert "PrivateDevices" not in (rendered / "model-runtime-dcgm-exporter.service").read_text()


def test_the_dcgm_counters_are_field_type_help_lines(rendered: Path) -> None:
    lines = [
        line for line in (rendered / "dcgm-counters.csv").read_text().splitlines() if not line.startswith("#")
    ]
    assert lines
    for line in lines:
        field, kind, description = (part.strip() for part in line.split(",", 2))
        assert field.startswith("DCGM_FI_")
        assert kind in ("gauge", "counter")
        assert description
