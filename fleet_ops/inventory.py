"""The fleet as an Ansible inventory describes it, for tools outside a playbook (Fabric).

Variables are resolved the way a play would see them: the roles' defaults first, then the inventory's
group and host variables, templated with Ansible's own templar. So a tool agrees with the playbooks on
ports, paths and instance counts without keeping a copy of any default.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.template import Templar, trust_as_template
from ansible.vars.manager import VariableManager

from filter_plugins.models import instance_models, model_entries, models_for_host

# fleet_ops runs from the repository checkout (it is not in the runtime wheel), so the roles sit beside it.
ROLES = Path(__file__).resolve().parents[1] / "roles"
ROLE_DEFAULTS = ("model_runtime", "model_artifacts", "loadbalancer", "supervisord")


@dataclass(frozen=True)
class FleetHost:
    name: str
    groups: frozenset[str]
    vars: dict[str, Any]

    @property
    def local(self) -> bool:
        return self.vars.get("ansible_connection") == "local"

    @property
    def address(self) -> str:
        return str(self.vars.get("ansible_host") or self.name)

    @property
    def known_hosts(self) -> str | None:
        match = re.search(r"UserKnownHostsFile=(\S+)", str(self.vars.get("ansible_ssh_common_args", "")))
        return match.group(1) if match else None

    def models(self) -> list[dict]:
        """The model entries this host runs (model_runtime_models, completed as the role completes them)."""
        entries = model_entries(self.vars.get("model_runtime_models") or [{}], self.vars)
        return models_for_host(entries, self.name, sorted(self.groups))

    def instances(self) -> list[int]:
        return [int(i) for i in instance_models(self.models())]

    def port(self, instance: int) -> int:
        return int(self.vars["model_runtime_base_port"]) + instance - 1

    def service(self, instance: int) -> str:
        """Instance N's systemd unit (with .service) or supervisord program (its log: <service>.log in
        model_runtime_log_dir), named as the model_runtime role names it: model_runtime_service_name-N."""
        return f"{self.vars['model_runtime_service_name']}-{instance}"


@functools.cache
def _init_plugins() -> None:
    """What ansible-playbook does first, once per process: lookups (file, env) resolve through it."""
    init_plugin_loader()


def _trusted(value: Any) -> Any:
    """Ansible 2.19 templates only strings it trusts (those its own loader read); the role defaults
    read here are the same files a play would trust."""
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, dict):
        return {key: _trusted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_trusted(item) for item in value]
    return value


def _role_defaults() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for role in ROLE_DEFAULTS:
        merged.update(yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text()) or {})
    return _trusted(merged)


def load_fleet(inventory: Path) -> dict[str, FleetHost]:
    """Every host of the inventory with the variables a play would see (facts aside)."""
    _init_plugins()

    loader = DataLoader()
    manager = InventoryManager(loader=loader, sources=[str(inventory)])
    variables = VariableManager(loader=loader, inventory=manager)
    defaults = _role_defaults()
    hosts = {}
    for host in manager.get_hosts():
        raw = {**defaults, **variables.get_vars(host=host, include_hostvars=False)}
        templar = Templar(loader=loader, variables=raw)
        resolved = {}
        for key, value in raw.items():
            try:
                resolved[key] = templar.template(value)
            except Exception:
                resolved[key] = None
        groups = frozenset(g.name for g in host.get_groups())
        hosts[host.name] = FleetHost(host.name, groups, resolved)
    return hosts
