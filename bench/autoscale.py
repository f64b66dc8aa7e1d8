"""The autoscaler on the local fleet, and why it reads the queue rather than the request rate.

Part 1, the signal (one runtime server, 4 batch slots): the same 8 clients send short prompts, then
prompts near the model's context limit. Printed for each: requests per second, sequences waiting
(mean of /metrics sampled every 0.25 s) and the time to first token's p90. A requests-per-target
policy set at what short prompts saturate a replica with sees the long-prompt load at a fraction of
its target and adds nothing; the queue is as deep.

Part 2, the ramp (the embedded default with a pool of 2 replicas, 1 serving, the autoscaler on at up
to 2): an overload of 7 clients without pause (4 batch slots a replica), then a light load of 1.
Printed: the time from the overload's start to the autoscaler's decision and to the added replica
serving (HAProxy has it UP), the requests served and refused (429) and failed in that time; then from
the end of the overload to the replica taken out. The fleet is stopped at the end.

    .venv/bin/python -m bench.autoscale [--skip-ramp]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import calendar
import json
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# harness.models before harness.fleet: transformers imports torch's compiler, which refuses to load once
# Ansible (imported by harness.fleet through fleet_ops.inventory) has patched sys.intern.
from harness.models import ensure_demo_model  # isort: split

from transformers import AutoTokenizer

from bench.serving import long_prompt
from harness.fleet import DEMO_ONLY, LocalFleet
from harness.load import Load, Outcome, completions, percentile
from harness.server import API_KEY, RuntimeProcess, metric_value

SLOTS = 4  # batch slots of a replica, in both parts
CLIENTS = 8
SECONDS = 30
NEW_TOKENS = 16
POLICY = {"min_replicas": 1, "max_replicas": 2, "capacity_per_replica": SLOTS, "queue_per_replica_out": 1.0,
          "cooldown_out_s": 20, "cooldown_in_s": 20, "stable_in_s": 20}  # fmt: skip


@dataclass
class SignalRun:
    name: str
    requests_per_s: float
    queued_mean: float
    ttft_p90_s: float
    failed: int


def sample_while(run: Callable[[], None], sample: Callable[[], float], every_s: float = 0.25) -> list[float]:
    samples: list[float] = []
    done = threading.Event()

    def sampler() -> None:
        while not done.wait(every_s):
            samples.append(sample())

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        run()
    finally:
        done.set()
        thread.join()
    return samples


def signal_part(model: Path, root: Path) -> list[SignalRun]:
    tokenizer = AutoTokenizer.from_pretrained(model)
    context = int(json.loads((model / "config.json").read_text())["max_position_embeddings"])
    prompts = {
        "short prompts": "This License",
        "long prompts": long_prompt(tokenizer, context - NEW_TOKENS - 8),
    }
    server = RuntimeProcess(
        model, root, {"scheduler": {"max_batch_size": SLOTS, "max_queue": 64}}, name="demo"
    )
    server.start()
    runs = []
    try:
        for name, prompt in prompts.items():
            load = Load(server.base_url, completions("demo", NEW_TOKENS, prompt), CLIENTS, API_KEY,
                        seconds=SECONDS, timeout_s=300)  # fmt: skip
            queued = sample_while(load.run, lambda: metric_value(server, "model_runtime_queue_depth"))
            answered = [o for o in load.outcomes if o.ok]
            runs.append(SignalRun(
                name, len(answered) / (load.ended - load.started), sum(queued) / max(len(queued), 1),
                percentile([o.first_event_s for o in answered if o.first_event_s is not None], 90),
                len(load.failures),
            ))  # fmt: skip
    finally:
        server.stop()
    return runs


def run_started(fleet: LocalFleet) -> float | None:
    """When the autoscaler's first scale run started (the runner's log, UTC to the second)."""
    log = fleet.prefix / "var/log/model-runtime/schedules/autoscale.log"
    found = re.search(r"^(\S+Z) start ", log.read_text() if log.exists() else "", re.MULTILINE)
    return calendar.timegm(time.strptime(found.group(1), "%Y-%m-%dT%H:%M:%SZ")) if found else None


def counts(outcomes: list[Outcome], start: float, end: float) -> tuple[int, int, int]:
    window = [o for o in outcomes if start <= o.started < end]
    return (sum(o.ok for o in window), sum(o.status == 429 for o in window),
            sum(not o.ok and o.status != 429 for o in window))  # fmt: skip


def wait(check: Callable[[], bool], timeout_s: float, every_s: float = 0.5) -> float | None:
    """The time.monotonic() at which check() first held; None if it did not within timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(every_s)
    return None


def ramp_part(model: Path, root: Path) -> None:
    fleet = LocalFleet(
        root,
        model,
        instances=2,
        runtime_settings={"scheduler": {"max_batch_size": SLOTS, "max_queue": 4}},
        models=DEMO_ONLY,
    )
    try:
        for name, extra in (("site.yml", None), ("scale.yml", {"replicas": 1})):
            run = fleet.run(name, extra)
            if run.returncode != 0:
                raise SystemExit(f"{name} failed:\n{run.output[-3000:]}")
        on = fleet.autoscaler(True, POLICY)
        if on.returncode != 0:
            raise SystemExit(f"control.yml failed:\n{on.output[-3000:]}")
        with fleet.load(clients=7) as overload:
            start, started_at = time.monotonic(), time.time()
            # The decision is its scale run's start, which the runner logs at once, to the second (the
            # autoscaler's own log line comes when the run has ended).
            ran = wait(lambda: run_started(fleet) is not None, 300)
            decided = start + (run_started(fleet) or 0.0) - started_at if ran else None
            serving = wait(lambda: list(fleet.server_states().values()).count("UP") == 2, 300)
            overload_end = time.monotonic()
        with fleet.load(clients=1, pause_s=0.25) as light:
            light_start = time.monotonic()

            def one_left() -> bool:
                return fleet.serving("demo") == 1 and list(fleet.server_states().values()).count("UP") == 1

            removed = wait(one_left, 400)
        fleet.autoscaler(False, POLICY)
        print("\nScale-out: from an overload of 7 clients on 1 replica (4 batch slots, 4 queue places)")
        print(f"  overload to the decision (its scale run's start)    {_s(decided, start)}")
        print(f"  overload to the added replica serving (HAProxy UP)  {_s(serving, start)}")
        end = serving or overload_end
        served, refused, failed = counts(overload.outcomes, start, end)
        print(f"  during the ramp: served {served}, refused (429) {refused}, failed {failed}")
        print("\nScale-in: from the overload's end, 1 client with a 0.25 s pause")
        print(f"  to the replica taken out (record and HAProxy)      {_s(removed, light_start)}")
        served, refused, failed = counts(light.outcomes, light_start, removed or time.monotonic())
        print(f"  meanwhile: served {served}, refused (429) {refused}, failed {failed}")
    finally:
        fleet.stop()


def _s(at: float | None, start: float) -> str:
    return "did not happen" if at is None else f"{at - start:6.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-ramp", action="store_true", help="part 1 only (no fleet)")
    args = parser.parse_args()
    model = ensure_demo_model()
    with tempfile.TemporaryDirectory(prefix="bench-autoscale-") as root:
        runs = signal_part(model, Path(root))
        print(f"Signals: {CLIENTS} clients for {SECONDS} s against one replica with {SLOTS} batch slots, "
              f"{NEW_TOKENS} tokens a request")  # fmt: skip
        print(f"  {'load':<14} {'req/s':>7} {'queued (mean)':>14} {'TTFT p90':>9} {'failed':>7}")
        for r in runs:
            rate, queued, ttft = f"{r.requests_per_s:7.2f}", f"{r.queued_mean:14.2f}", f"{r.ttft_p90_s:8.3f}s"
            print(f"  {r.name:<14} {rate} {queued} {ttft} {r.failed:7d}")
        short, long = runs
        print(f"  long/short req/s {long.requests_per_s / short.requests_per_s:.2f}, "
              f"long/short queued {long.queued_mean / max(short.queued_mean, 1e-9):.2f}, "
              f"long/short TTFT p90 {long.ttft_p90_s / short.ttft_p90_s:.2f}")  # fmt: skip
        if not args.skip_ramp:
            ramp_part(model, Path(root) / "fleet")


if __name__ == "__main__":
    main()
