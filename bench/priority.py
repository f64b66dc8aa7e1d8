"""Interactive time to first token while batch work keeps one replica saturated, against the same
replica idle (issue 15's goal: interactive p90 within 2x of idle).

One runtime server (demo model, 16 batch slots, a waiting line of up to 64) and three keys: interactive,
batch and standard (no class: what every key was before priorities). A probe client sends streamed
requests one after another (16 new tokens each) and its time to first token is taken from each stream's
first event; the saturating load is 40 batch clients without pause (long streams: 96 new tokens, end of
text ignored), so that every slot is held and the line is never empty. Printed for each case, in this one
run: the probe's TTFT p50 and p90, the load's tokens/s, and the ratio of the probe's p90 to the idle p90
of the same server:

  idle          the probe alone (interactive key)
  no classes    the probe and the load with the standard key: arrival order, as before
  interactive   the probe with the interactive key, the load with the batch key
  kept slots    the same, on a server with scheduler.interactive_slots: 2 (idle measured again on it)

    .venv/bin/python -m bench.priority [--probes N]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/priority.py`, Python puts bench/ on the path rather than the repository.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import tempfile
from dataclasses import dataclass

from harness.load import Load, completions, percentile
from harness.models import ensure_demo_model
from harness.server import API_KEY, RuntimeProcess

INTERACTIVE_KEY = "bench-interactive-0123456789"
BATCH_KEY = "bench-batch-0123456789"
SLOTS = 16
LOAD_CLIENTS = 40
LOAD_TOKENS = 96
PROBE_TOKENS = 16


@dataclass(frozen=True)
class Case:
    name: str
    ttft_p50_s: float
    ttft_p90_s: float
    load_tokens_per_s: float


def streamed(max_tokens: int) -> object:
    extra = {"ignore_eos": True}
    return ({**body, **extra} for body in completions("demo", max_tokens) if body["stream"])


def measure(server: RuntimeProcess, name: str, probe_key: str, load_key: str | None, probes: int) -> Case:
    load = None
    if load_key is not None:
        load = Load(server.base_url, streamed(LOAD_TOKENS), LOAD_CLIENTS, load_key, timeout_s=300).start()
        load.wait_for(LOAD_CLIENTS)  # the slots are full and the line has formed
    probe = Load(server.base_url, streamed(PROBE_TOKENS), 1, probe_key, max_requests=probes).run()
    rate = 0.0
    if load is not None:
        load.stop()
        rate = load.throughput().tokens_per_second
    assert not probe.failures, probe.failures[:3]
    ttft = [o.first_event_s for o in probe.outcomes if o.first_event_s is not None]
    return Case(name, percentile(ttft, 50), percentile(ttft, 90), rate)


def server(model: Path, root: Path, interactive_slots: int) -> RuntimeProcess:
    keys = root / f"keys-{interactive_slots}"
    keys.write_text(f"{API_KEY}\n{INTERACTIVE_KEY} priority=interactive\n{BATCH_KEY} priority=batch\n")
    keys.chmod(0o600)
    settings = {
        "server": {"api_keys_file": str(keys)},
        "scheduler": {"max_batch_size": SLOTS, "max_queue": 64, "interactive_slots": interactive_slots},
    }
    return RuntimeProcess(model, root, settings, name="demo").start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=40, help="probe requests per case")
    args = parser.parse_args()
    model = ensure_demo_model()
    rows: list[tuple[Case, Case]] = []  # (case, the idle case of its server)
    with tempfile.TemporaryDirectory(prefix="bench-priority-") as root:
        # (server's kept slots, [(case, probe's key, load's key)]) after each server's idle case.
        plan = [
            (0, [("no classes", API_KEY, API_KEY), ("interactive", INTERACTIVE_KEY, BATCH_KEY)]),
            (2, [("kept slots", INTERACTIVE_KEY, BATCH_KEY)]),
        ]
        for slots, cases in plan:
            runtime = server(model, Path(root), slots)
            try:
                idle = measure(runtime, "idle", INTERACTIVE_KEY, None, args.probes)
                rows.append((idle, idle))
                rows += [(measure(runtime, *case, args.probes), idle) for case in cases]
            finally:
                runtime.stop()
    print(f"Interactive TTFT, one replica ({SLOTS} slots), {args.probes} probes a case; "
          f"load: {LOAD_CLIENTS} clients x {LOAD_TOKENS} tokens")  # fmt: skip
    print(f"  {'case':<12} {'TTFT p50':>9} {'TTFT p90':>9} {'load tok/s':>11} {'p90/idle p90':>13}")
    for case, idle in rows:
        print(f"  {case.name:<12} {case.ttft_p50_s:8.3f}s {case.ttft_p90_s:8.3f}s "
              f"{case.load_tokens_per_s:11.1f} {case.ttft_p90_s / idle.ttft_p90_s:13.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
