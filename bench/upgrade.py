"""How long a rolling upgrade of the local fleet takes, and where the time goes.

Brings up the embedded default with 3 replicas behind HAProxy (site.yml on inventories/local, under a
temporary prefix), then rolls a new runtime release and a new model version through it
(playbooks/upgrade.yml) under constant client load through HAProxy (4 clients, streaming and not),
and prints: the upgrade's wall time, each instance's cycle split into drain, stop, install and start,
to ready, smoke and enable (from the playbook's own `cycle:` lines), the runtime's own part of it (its
process spawned to its `ready` log line: imports, model load, warm-up, from supervisord's and the
instance's logs), Ansible's share of the cycle (what is neither drain, the runtime's start nor the
smoke test), and the requests served and failed while it ran. The fleet is stopped at the end.

    .venv/bin/python bench/upgrade.py   (or -m bench.upgrade)
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/upgrade.py`, Python puts bench/ on the path rather than the repository.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime

# harness.models before harness.fleet: transformers imports torch's compiler, which refuses to load once
# Ansible (imported by harness.fleet through fleet_ops.inventory) has patched sys.intern.
from harness.models import ensure_demo_model  # isort: split

from fleet_ops.cycle import STEPS, parse_cycles
from harness.fleet import DEMO_ONLY, LocalFleet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-upgrade-") as root:
        fleet = LocalFleet(Path(root), ensure_demo_model(), instances=args.replicas, models=DEMO_ONLY)
        try:
            up = fleet.run("site.yml")
            if up.returncode != 0:
                raise SystemExit(f"site.yml failed:\n{up.output[-3000:]}")
            target = {
                "model_runtime_version": fleet.new_runtime,
                "model_artifacts_source": str(fleet.model_version("v2")),
            }
            with fleet.load(clients=args.clients) as traffic:
                traffic.wait_for(20)
                served_before = len(traffic.outcomes)
                started = time.monotonic()
                run = fleet.run("upgrade.yml", target)
                seconds = time.monotonic() - started
                during = traffic.outcomes[served_before:]
            if run.returncode != 0:
                raise SystemExit(f"upgrade.yml failed:\n{run.output[-3000:]}")
            report(fleet, seconds, parse_cycles(run.output), during)
        finally:
            fleet.stop()


RUNTIME_OWN = "runtime start to ready"
ANSIBLE_SHARE = "Ansible's share"


def runtime_start_to_ready(log_dir: Path, server: str) -> float:
    """Seconds from supervisord spawning the instance's last process to its `ready` log line."""
    program = "model-runtime-" + server.rsplit("-", 1)[1]
    spawns = re.findall(
        rf"^(\S+ \S+) INFO spawned: '{program}'", (log_dir / "supervisord.log").read_text(), re.M
    )
    spawned = datetime.strptime(spawns[-1], "%Y-%m-%d %H:%M:%S,%f").astimezone()
    lines = (
        json.loads(line)
        for line in (log_dir / f"{program}.log").read_text().splitlines()
        if line.startswith("{")
    )
    ready = [line["ts"] for line in lines if line.get("message") == "ready"][-1]
    return (datetime.fromisoformat(ready) - spawned).total_seconds()


def report(fleet: LocalFleet, seconds: float, cycles: dict[str, dict[str, float]], during: list) -> None:
    add_shares(cycles, lambda server: fleet.prefix / "var/log/model-runtime")
    print(f"rolling upgrade of {len(cycles)} replicas ({fleet.old_runtime} -> {fleet.new_runtime}, "
          f"model {fleet.old_model} -> v2): {seconds:.1f} s for the whole playbook run\n")  # fmt: skip
    print_cycles(cycles)
    print_requests(during)


def add_shares(cycles: dict[str, dict[str, float]], log_dir: Callable[[str], Path]) -> None:
    """Add to each instance's cycle (server name -> step -> seconds) the runtime's own start to ready,
    from the logs in log_dir(server), and Ansible's share: what is neither drain, that start nor smoke."""
    for server, steps in cycles.items():
        steps[RUNTIME_OWN] = runtime_start_to_ready(log_dir(server), server)
        ansible = steps["total"] - steps["drain"] - steps["smoke"] - steps[RUNTIME_OWN]
        steps[ANSIBLE_SHARE] = 100 * ansible / steps["total"]


def print_cycles(cycles: dict[str, dict[str, float]]) -> None:
    """A table of the cycles (after add_shares), one row an instance, and their medians."""
    labels = [*STEPS.values(), "total", RUNTIME_OWN]
    print("| instance | " + " | ".join([*labels, ANSIBLE_SHARE]) + " |")
    print("|---" * (len(labels) + 2) + "|")
    medians = {
        label: statistics.median(c.get(label, 0) for c in cycles.values())
        for label in [*labels, ANSIBLE_SHARE]
    }
    rows = [*sorted(cycles.items()), ("median", medians)]
    for server, steps in rows:
        cells = [f"{steps.get(label, 0):.1f} s" for label in labels] + [f"{steps[ANSIBLE_SHARE]:.0f}%"]
        print(f"| {server} | " + " | ".join(cells) + " |")


def print_requests(during: list) -> None:
    failed = [o for o in during if not o.ok]
    streamed = sum(1 for o in during if o.stream)
    print(
        f"\nrequests during the upgrade: {len(during) - len(failed)} served, {len(failed)} failed "
        f"({streamed} of {len(during)} streamed)"
    )
    for outcome in failed[:5]:
        print(f"  failed: {outcome.error}")


if __name__ == "__main__":
    main()
