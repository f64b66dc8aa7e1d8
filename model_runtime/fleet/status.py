"""The fleet status table: what each instance runs, from the hosts' release records, marked where it
differs from the release the inventory wants. Rendered the same for `playbooks/status.yml` (through
the filter plugin in filter_plugins/) and for `fab status`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

COLUMNS = ("host", "instance", "runtime", "model", "since", "run", "state", "")


def rows(records: Mapping[str, Mapping[str, Any]], desired: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per instance: records maps host -> release record (or {} when the host has none)."""
    table = []
    for host in sorted(records):
        record = records[host] or {}
        instances = record.get("instances") or {}
        if not instances:
            table.append({"host": host, "instance": "-", "differs": True, "state": "no record"})
            continue
        for instance in sorted(instances, key=int):
            entry = instances[instance]
            differs = any(
                desired.get(key) not in (None, "", entry.get(key))
                for key in ("runtime_version", "model", "model_version")
            )
            table.append({"host": host, "instance": instance, **entry, "differs": differs})
    return table


def render(
    records: Mapping[str, Mapping[str, Any]], desired: Mapping[str, Any], as_json: bool = False
) -> str:
    table = rows(records, desired)
    if as_json:
        return json.dumps({"desired": dict(desired), "instances": table}, indent=2, sort_keys=True)
    lines = [
        [
            row["host"],
            str(row["instance"]),
            row.get("runtime_version", "-"),
            f"{row.get('model', '-')}@{row.get('model_version', '-')}",
            row.get("since", "-"),
            row.get("run", "-"),
            row.get("state", "-"),
            "DIFFERS" if row["differs"] else "",
        ]
        for row in table
    ]
    widths = [max(len(str(c)) for c in column) for column in zip(COLUMNS, *lines, strict=False)]
    out = ["  ".join(h.upper().ljust(w) for h, w in zip(COLUMNS, widths, strict=True)).rstrip()]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    runtime, model = desired.get("runtime_version") or "-", desired.get("model") or "-"
    wanted = f"{runtime} serving {model}@{desired.get('model_version') or 'any'}"
    differing = sum(1 for row in table if row["differs"])
    out.append(f"desired: {wanted}; {differing} of {len(table)} instances differ")
    return "\n".join(out)
