"""The fleet status table: what each instance runs, from the hosts' release records, marked where it
differs from the release the inventory wants for its model. Rendered the same for `playbooks/status.yml`
(through the filter plugin in filter_plugins/) and for `fab status`, which adds what the load balancers
say of each instance (read with module_utils/haproxy_runtime.py, the runtime API client)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

COLUMNS = ("host", "instance", "runtime", "engine", "model", "since", "run", "state", "")
# What a release is made of, each with what an instance ran when its record was written before that
# part was recorded (None: nothing to assume). An empty wanted part accepts anything.
RELEASE = {
    "runtime_version": None,
    "model": None,
    "model_version": None,
    "engine": "auto",
    "tensor_parallel_size": 1,
    "pipeline_parallel_size": 1,
}
# Each load balancer's view of its backends: balancer -> server -> {"status": "UP", "sessions": 0}.
Pools = Mapping[str, Mapping[str, Mapping[str, Any]]]
# Model -> the release the inventory wants for it.
Desired = Mapping[str, Mapping[str, Any]]


def pool_status(server: str, pools: Pools) -> str:
    """What the load balancers say of a server: one status where they agree, each one's otherwise."""
    seen = {balancer: (pool.get(server) or {}).get("status", "absent") for balancer, pool in pools.items()}
    if len(set(seen.values())) == 1:
        return next(iter(seen.values()))
    return ", ".join(f"{balancer} {status}" for balancer, status in sorted(seen.items())) or "-"


def differs(entry: Mapping[str, Any], desired: Desired) -> bool:
    """Whether an instance's recorded release is not the one wanted for its model (the playbooks' parts
    are text or numbers alike: compared as text); an instance of a model the inventory no longer
    lists differs."""
    wanted = desired.get(str(entry.get("model")))
    if wanted is None:
        return True
    return any(
        str(wanted[key]) != str(entry.get(key, assumed))
        for key, assumed in RELEASE.items()
        if wanted.get(key) not in (None, "")
    )


def engine(release: Mapping[str, Any]) -> str:
    """`vllm`, or `vllm tp2 pp2` for a model spread over several GPUs."""
    sizes = [
        f"{label}{release[key]}"
        for key, label in (("tensor_parallel_size", "tp"), ("pipeline_parallel_size", "pp"))
        if str(release.get(key, 1)) != "1"
    ]
    return " ".join([str(release.get("engine", RELEASE["engine"])), *sizes])


def rows(
    records: Mapping[str, Mapping[str, Any]], desired: Desired, pools: Pools | None = None
) -> list[dict[str, Any]]:
    """One row per instance: records maps host -> release record (or {} when the host has none); with
    the load balancers' pools, each row says what they make of the instance ("balancers")."""
    table = []
    for host in sorted(records):
        record = records[host] or {}
        instances = record.get("instances") or {}
        if not instances:
            table.append({"host": host, "instance": "-", "differs": True, "state": "no record"})
            continue
        for instance in sorted(instances, key=int):
            entry = instances[instance]
            table.append({"host": host, "instance": instance, **entry, "differs": differs(entry, desired)})
    if pools is not None:
        for row in table:
            row["balancers"] = pool_status(f"{row['host']}-{row['instance']}", pools)
    return table


def render(
    records: Mapping[str, Mapping[str, Any]],
    desired: Desired,
    as_json: bool = False,
    pools: Pools | None = None,
) -> str:
    table = rows(records, desired, pools)
    if as_json:
        return json.dumps({"desired": dict(desired), "instances": table}, indent=2, sort_keys=True)
    lines = [
        [
            row["host"],
            str(row["instance"]),
            row.get("runtime_version", "-"),
            engine(row) if row["instance"] != "-" else "-",
            f"{row.get('model', '-')}@{row.get('model_version', '-')}",
            row.get("since", "-"),
            row.get("run", "-"),
            row.get("state", "-"),
            *([row["balancers"]] if pools is not None else []),
            "DIFFERS" if row["differs"] else "",
        ]
        for row in table
    ]
    columns = (*COLUMNS[:-1], "balancers", COLUMNS[-1]) if pools is not None else COLUMNS
    widths = [max(len(str(c)) for c in column) for column in zip(columns, *lines, strict=False)]
    out = ["  ".join(h.upper().ljust(w) for h, w in zip(columns, widths, strict=True)).rstrip()]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    wanted = "; ".join(
        f"{release.get('runtime_version') or '-'} ({engine(release)}) serving "
        f"{model}@{release.get('model_version') or 'any'}"
        for model, release in sorted(desired.items())
    )
    differing = sum(1 for row in table if row["differs"])
    out.append(f"desired: {wanted}; {differing} of {len(table)} instances differ")
    return "\n".join(out)
