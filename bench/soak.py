"""Soak: the local fleet driven through HAProxy above its capacity for a bounded time.

Brings up the embedded default (site.yml on inventories/local, under a temporary prefix) with few batch
slots and queue places, runs harness.soak against it (which says what is counted and promised), prints
its report and stops the fleet.

    .venv/bin/python bench/soak.py [--seconds 120] [--clients 48] [--replicas 3]   (or -m bench.soak)
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/soak.py`, Python puts bench/ on the path rather than the repository.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import tempfile

# harness.models before harness.fleet: transformers imports torch's compiler, which refuses to load once
# Ansible (imported by harness.fleet through fleet_ops.inventory) has patched sys.intern.
from harness.models import ensure_demo_model  # isort: split

from harness.fleet import DEMO_ONLY, KEY, LocalFleet
from harness.soak import OVERLOAD_SETTINGS, report, soak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=48)
    parser.add_argument("--replicas", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as root:
        fleet = LocalFleet(
            Path(root),
            ensure_demo_model(),
            instances=args.replicas,
            runtime_settings=OVERLOAD_SETTINGS,
            models=DEMO_ONLY,
        )
        try:
            up = fleet.run("site.yml")
            if up.returncode != 0:
                raise SystemExit(f"site.yml failed:\n{up.output[-3000:]}")
            result = soak(fleet.url, KEY, fleet.tls(), fleet.replica_pids, args.clients, args.seconds)
            print(report(result, args.clients))
        finally:
            fleet.stop()


if __name__ == "__main__":
    main()
