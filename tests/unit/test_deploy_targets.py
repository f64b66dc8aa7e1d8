"""The example Prometheus targets (deploy/prometheus/targets/) are the example inventory's, at the ports
the roles give them: a change of a role's port default or of the inventory shows here, not in a
Prometheus that scrapes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.facts import REPO, role_default

pytestmark = pytest.mark.unit

INVENTORY = REPO / "inventories" / "example"
TARGETS = REPO / "deploy" / "prometheus" / "targets"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def hosts(group: str) -> dict[str, dict[str, Any]]:
    """The group's hosts, each with its variables: the role's default, the group's, the host's own."""
    group_vars_file = INVENTORY / "group_vars" / group / "vars.yml"
    group_vars = (load(group_vars_file) or {}) if group_vars_file.is_file() else {}
    found = load(INVENTORY / "hosts.yml")["all"]["children"][group]["hosts"]
    return {name: {**group_vars, **(own or {})} for name, own in found.items()}


def targets(file: str) -> dict[str, list[str]]:
    return {entry["labels"]["host"]: entry["targets"] for entry in load(TARGETS / file)}


def var(host: dict[str, Any], name: str, role: str) -> Any:
    return host.get(name, role_default(name, REPO / "roles" / role / "defaults" / "main.yml"))


def test_every_runtime_instance_is_scraped_at_its_internal_listener() -> None:
    expected = {}
    for name, host in hosts("gpu_servers").items():
        base = var(host, "model_runtime_metrics_base_port", "model_runtime")
        instances = var(host, "model_runtime_instances", "model_runtime")
        expected[name] = [f"{host['ansible_host']}:{base + i}" for i in range(instances)]
    assert targets("model-runtime.yml") == expected


def test_every_load_balancer_is_scraped_at_its_stats_listener() -> None:
    expected = {
        name: [f"{host['ansible_host']}:{var(host, 'loadbalancer_stats_port', 'loadbalancer')}"]
        for name, host in hosts("loadbalancers").items()
    }
    assert targets("haproxy.yml") == expected
