"""The rolling cycle of one instance, timed step by step: the upgrade, rollback and restart runs print
one `cycle:` line per instance (through the filter plugin in filter_plugins/), and bench/upgrade.py
reads those lines back. One format, written and parsed here."""

from __future__ import annotations

import re
from collections.abc import Mapping

# The steps of the cycle, in order, with the words the line uses for them.
STEPS = {
    "drain": "drain",
    "stop": "stop",
    "install": "install and start",
    "ready": "to ready",
    "smoke": "smoke",
    "enable": "enable",
}

_LINE = re.compile(r"cycle: (?P<server>\S+) (?P<steps>[a-z0-9., ]*?) total (?P<total>[\d.]+)s")
_STEP = re.compile(r"(?P<label>[a-z][a-z ]*?) (?P<seconds>[\d.]+)s")


def cycle_line(started: Mapping[str, float], server: str, finished: float) -> str:
    """`cycle: host-1 drain 0.41s, stop 2.02s, ..., total 14.3s` from the time each step began and
    the time the last one ended (seconds since the epoch)."""
    names = [name for name in STEPS if name in started]
    ends = [started[name] for name in names[1:]] + [finished]
    parts = [f"{STEPS[name]} {end - started[name]:.2f}s" for name, end in zip(names, ends, strict=True)]
    total = finished - started[names[0]] if names else 0.0
    return f"cycle: {server} {', '.join(parts)}, total {total:.2f}s"


def parse_cycles(output: str) -> dict[str, dict[str, float]]:
    """Every `cycle:` line in a run's output: server -> {step label: seconds, 'total': seconds}.
    Ansible's YAML results fold long strings onto indented lines; they are unfolded first."""
    cycles = {}
    for match in _LINE.finditer(re.sub(r"\n\s+", " ", output)):
        steps = {m["label"]: float(m["seconds"]) for m in _STEP.finditer(match["steps"])}
        cycles[match["server"]] = {**steps, "total": float(match["total"])}
    return cycles
