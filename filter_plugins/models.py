"""Jinja filters over the fleet's models (the model_runtime role's model_runtime_models): a list of
entries, each a model with the instances that serve it on each host, its engine, where its files come
from (passed on to the model_artifacts role) and the hosts that run it. An entry says what differs
from the single-model variables (model_runtime_instances, model_runtime_engine, ...); the default
list, one empty entry, is the fleet of one model those variables describe.

On a host, the instances of its models are numbered in the list's order: 2 of demo then 1 of demo-int8
are instances 1 and 2 (demo) and 3 (demo-int8), on consecutive ports. A run may act on one model only
(`-e model=NAME`, or NAME@ALIAS / NAME:VERSION to take that model from the registry).

The playbooks use these as Jinja filters, `fab` (fleet_ops/inventory.py) to know a host's instances.
They run where Ansible runs, a cloud instance's boot included, whose Ansible has the runtime's
standard-library modules and no more (infra/boot.py): so they import nothing else."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from model_runtime.registry.trust import name_problem

# The runtime's part of an entry, and the name, each with the role variable that gives it where the
# entry is silent (the single-model variables).
SINGLE_MODEL_VARIABLES = {
    "name": "model_runtime_model_name",
    "instances": "model_runtime_instances",
    "engine": "model_runtime_engine",
    "tensor_parallel_size": "model_runtime_tensor_parallel_size",
    "pipeline_parallel_size": "model_runtime_pipeline_parallel_size",
}
RUNTIME_FIELDS = ("instances", "engine", "tensor_parallel_size", "pipeline_parallel_size")
# The model_artifacts role's part (that role's defaults fill what an entry leaves out).
ARTIFACT_FIELDS = ("source", "ref", "registry", "version", "headers")
FIELDS = ("name", *RUNTIME_FIELDS, *ARTIFACT_FIELDS, "hosts")
ENGINES = ("auto", "builtin", "vllm")
# A registry reference's name part: NAME@ALIAS or NAME:VERSION.
_REFERENCE_TAIL = re.compile(r"[@:].*$", re.DOTALL)


def wanted_name(wanted: object) -> str:
    """The model a run acts on (-e model=NAME[@ALIAS|:VERSION]); "" for every model."""
    return _REFERENCE_TAIL.sub("", str(wanted or "")).strip()


def model_entries(models: object, variables: Mapping[str, Any], wanted: object = "") -> list[dict]:
    """Each entry with every field: what it says, else the single-model variable's (of variables: a
    host's); a `-e model=NAME@ALIAS` run takes that model's files from the registry reference. Assumes
    model_problems found nothing."""
    defaults = {field: variables.get(variable) for field, variable in SINGLE_MODEL_VARIABLES.items()}
    entries = []
    for entry in models if isinstance(models, list) else []:
        ref = str(entry.get("ref") or "")
        full = {
            **{name: entry.get(name) for name in ARTIFACT_FIELDS},
            **{name: entry.get(name, defaults.get(name)) for name in RUNTIME_FIELDS},
            "name": str(entry.get("name") or wanted_name(ref) or defaults.get("name") or ""),
            "hosts": entry.get("hosts"),
        }
        if wanted_name(wanted) == full["name"] and str(wanted) != full["name"]:
            full["ref"] = str(wanted)
        full["instances"] = int(full["instances"] or 0)
        for size in ("tensor_parallel_size", "pipeline_parallel_size"):
            full[size] = int(full[size] or 1)
        entries.append(full)
    return entries


def _whole(value: object, least: int) -> bool:
    return isinstance(value, int | str) and str(value).isdigit() and int(value) >= least


def _entry_problems(entry: object, where: str, groups: Mapping[str, Any]) -> list[str]:
    if not isinstance(entry, Mapping):
        return [f"{where}: a mapping (name, instances, engine, source or ref, hosts, ...)"]
    problems = []
    unknown = sorted(str(key) for key in entry if key not in FIELDS)
    if unknown:
        problems.append(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    if "instances" in entry and not _whole(entry["instances"], 0):
        problems.append(f"{where}.instances: a whole number (instances on each of its hosts)")
    for size in ("tensor_parallel_size", "pipeline_parallel_size"):
        if size in entry and not _whole(entry[size], 1):
            problems.append(f"{where}.{size}: a whole number, 1 or more")
    if "engine" in entry and entry["engine"] not in ENGINES:
        problems.append(f"{where}.engine: one of {', '.join(ENGINES)}, not {entry['engine']!r}")
    hosts = entry.get("hosts")
    if hosts is not None:
        names = [hosts] if isinstance(hosts, str) else hosts
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            problems.append(f"{where}.hosts: a group's name or a list of hosts and groups")
        elif unknown_hosts := [n for n in names if n not in groups and not _is_host(n, groups)]:
            problems.append(f"{where}.hosts: no such group or host: {', '.join(unknown_hosts)}")
    return problems


def _is_host(name: str, groups: Mapping[str, Any]) -> bool:
    return any(name in members for members in groups.values())


def model_problems(
    models: object, variables: Mapping[str, Any], wanted: object = "", groups: Mapping[str, Any] | None = None
) -> list[str]:
    """What is wrong with the list, each problem naming the entry (models[i]) and its field; [] when
    nothing is."""
    if not isinstance(models, list) or not models:
        return ["model_runtime_models: a list of one or more models"]
    groups = groups or {}
    problems = [
        p
        for i, entry in enumerate(models)
        for p in _entry_problems(entry, f"model_runtime_models[{i}]", groups)
    ]
    if problems:
        return problems
    names = [entry["name"] for entry in model_entries(models, variables)]
    for i, name in enumerate(names):
        if problem := name_problem(name, f"model_runtime_models[{i}].name"):
            problems.append(problem)
        elif name in names[:i]:
            problems.append(f"model_runtime_models[{i}].name: {name!r} is listed twice")
    if wanted and wanted_name(wanted) not in names:
        problems.append(f"model={wanted}: not a model of this fleet ({', '.join(names)})")
    return problems


def models_for_host(entries: Sequence[Mapping[str, Any]], host: str, group_names: Sequence[str]) -> list:
    """The entries whose hosts include host (by name or one of its groups); an entry without hosts runs
    on every host of the play."""

    def runs_here(entry: Mapping[str, Any]) -> bool:
        hosts = entry.get("hosts")
        if hosts is None:
            return True
        names = [hosts] if isinstance(hosts, str) else hosts
        return host in names or any(group in names for group in group_names)

    return [entry for entry in entries if runs_here(entry)]


def instance_models(entries: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Instance number (as text, as the release record keys it) -> the model it serves."""
    names = [entry["name"] for entry in entries for _ in range(int(entry["instances"]))]
    return {str(i): name for i, name in enumerate(names, start=1)}


def releases(
    entries: Sequence[Mapping[str, Any]], installed: Mapping[str, Mapping[str, Any]], runtime_version: str
) -> dict[str, dict]:
    """Model -> the release its instances should run: the runtime, the model version the model_artifacts
    role installed ("" where this run installed none: status and rollback runs), the engine."""
    return {
        entry["name"]: {
            "runtime_version": str(runtime_version),
            "model": entry["name"],
            "model_version": str((installed.get(entry["name"]) or {}).get("version", "")),
            "model_path": str((installed.get(entry["name"]) or {}).get("path", "")),
            "engine": entry["engine"],
            "tensor_parallel_size": int(entry["tensor_parallel_size"]),
            "pipeline_parallel_size": int(entry["pipeline_parallel_size"]),
        }
        for entry in entries
    }


def record_versions(records: Sequence[object], model: str) -> list[str]:
    """The versions of `model` that the hosts' release records say an instance runs, or returns to on
    a rollback (each instance's previous release): what a registry pin must keep."""
    versions = set()
    for record in records:
        if not isinstance(record, Mapping):
            continue
        for part in ("instances", "previous"):
            for release in (record.get(part) or {}).values():
                if (
                    isinstance(release, Mapping)
                    and release.get("model") == model
                    and release.get("model_version")
                ):
                    versions.add(str(release["model_version"]))
    return sorted(versions)


def model_not_found_body(name_expression: str) -> str:
    """The runtime's 404 body for an unknown model, the name written by name_expression (an HAProxy
    log-format expression). For the loadbalancer role's template only, on the control node: the
    runtime's server modules (FastAPI) are imported here, not where a cloud instance's boot loads these
    filters."""
    from model_runtime.server.errors import model_not_found_body as body

    return body(name_expression)


def instance_ports(count: object, api_base: object, metrics_base: object, config_dir: str) -> list[dict]:
    """A host's instances' ports, two each (the API's, the internal listener's), each with what holds it
    when it is ours: the instance's configuration file, on its command line (the preflight role's
    preflight_ports)."""
    return [
        {"port": int(str(base)) + i - 1, "owner": f"{config_dir}/instance-{i}.yaml"}
        for i in range(1, int(str(count)) + 1)
        for base in (api_base, metrics_base)
    ]


class FilterModule:
    def filters(self) -> dict:
        return {
            "model_entries": model_entries,
            "model_problems": model_problems,
            "models_for_host": models_for_host,
            "instance_models": instance_models,
            "instance_ports": instance_ports,
            "model_releases": releases,
            "record_versions": record_versions,
            "wanted_model": wanted_name,
            "model_not_found_body": model_not_found_body,
        }
