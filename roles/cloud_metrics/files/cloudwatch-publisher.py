#!/usr/bin/env python3
"""Publishes what a cloud instance's runtime sees to CloudWatch, for the auto scaling group's target
tracking: every interval, from each runtime instance's internal /metrics, the sequences waiting
(QueueDepth), the running batch (RunningBatch) and the time to first token's p90 over the interval
(TimeToFirstTokenP90, from the histogram's buckets: only when a request started in the interval).

Why a publisher of our own rather than the CloudWatch agent's Prometheus scrape: the agent drops
Prometheus histograms (it takes counters, gauges and summaries), so the time to first token could not
reach CloudWatch through it; embedded metric format logs would need the agent (or PutLogEvents) as
well. This is one PutMetricData call an interval, with boto3 from the OS (python3-boto3).

  cloudwatch-publisher.py CONFIG.json        (runs until SIGTERM)
  cloudwatch-publisher.py CONFIG.json --once (two readings one interval apart, one call)

CONFIG: {"region", "namespace", "dimensions": {name: value}, "interval_s", "sources": [metrics URLs]}
Standard library and boto3 only: it runs with the system's Python, beside any runtime release.
"""

from __future__ import annotations

import json
import math
import re
import signal
import sys
import threading
import urllib.request
from dataclasses import dataclass, field

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass
class Reading:
    """One scrape of one or more instances, summed."""

    queued: float = 0.0
    running: float = 0.0
    ttft_buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count

    def add(self, text: str) -> None:
        for line in text.splitlines():
            match = SAMPLE.match(line)
            if not match:
                continue
            name, labels, value = (
                match.group(1),
                dict(LABEL.findall(match.group(2) or "")),
                float(match.group(3)),
            )
            if name == "model_runtime_queue_depth":
                self.queued += value
            elif name == "model_runtime_running_batch_size":
                self.running += value
            elif name == "model_runtime_time_to_first_token_seconds_bucket":
                bound = math.inf if labels["le"] == "+Inf" else float(labels["le"])
                self.ttft_buckets[bound] = self.ttft_buckets.get(bound, 0.0) + value


def quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """The q-quantile of what a cumulative histogram observed between two readings, interpolated
    within its bucket as Prometheus's histogram_quantile does; None when it observed nothing."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0 or any(c < 0 for c in counts):  # nothing new, or a restart
        return None
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower  # above the highest finite bound: that bound, as Prometheus answers
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return None


def read(sources: list[str]) -> Reading:
    reading = Reading()
    for url in sources:
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 (the instance's own listener)
            reading.add(answer.read().decode())
    return reading


def metric_data(before: Reading, after: Reading, dimensions: dict[str, str]) -> list[dict]:
    dims = [{"Name": k, "Value": v} for k, v in sorted(dimensions.items())]
    data = [
        {"MetricName": "QueueDepth", "Dimensions": dims, "Value": after.queued, "Unit": "Count"},
        {"MetricName": "RunningBatch", "Dimensions": dims, "Value": after.running, "Unit": "Count"},
    ]
    p90 = quantile(0.9, before.ttft_buckets, after.ttft_buckets)
    if p90 is not None:
        data.append(
            {"MetricName": "TimeToFirstTokenP90", "Dimensions": dims, "Value": p90, "Unit": "Seconds"}
        )
    return data


def publish(config: dict, stop: threading.Event, once: bool = False) -> None:
    import boto3  # the OS's python3-boto3 (the boot packages install it)

    cloudwatch = boto3.client("cloudwatch", region_name=config["region"])
    before = read(config["sources"])
    while not stop.wait(float(config["interval_s"])):
        try:
            after = read(config["sources"])
        except OSError as error:  # the instance restarting: the next interval reads it again
            print(f"cloudwatch-publisher: no reading: {error}", file=sys.stderr, flush=True)
            continue
        cloudwatch.put_metric_data(
            Namespace=config["namespace"], MetricData=metric_data(before, after, config["dimensions"])
        )
        before = after
        if once:
            return


def main(argv: list[str]) -> int:
    with open(argv[1]) as file:
        config = json.load(file)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    publish(config, stop, once="--once" in argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
