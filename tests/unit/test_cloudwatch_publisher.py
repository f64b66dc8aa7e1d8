"""The cloud instances' CloudWatch publisher (roles/cloud_metrics/files): what it reads from the
runtime's /metrics and the p90 it computes from the histogram's buckets between two readings, checked
against the runtime's own metrics text and Prometheus's histogram_quantile on the same buckets."""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from prometheus_client import generate_latest

from harness import REPO
from model_runtime.server.metrics import RuntimeMetrics

SCRIPT = REPO / "roles/cloud_metrics/files/cloudwatch-publisher.py"


def publisher() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cloudwatch_publisher", SCRIPT)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def exposition(observations: list[float], queued: int = 0, running: int = 0) -> str:
    """The runtime's own /metrics text after these first-token times (its real metrics code)."""
    metrics = RuntimeMetrics()
    for seconds in observations:
        metrics.ttft.labels(model="demo").observe(seconds)
    metrics.queue_depth.labels(model="demo", priority="batch").set(queued)
    metrics.batch_size.labels(model="demo").set(running)
    return generate_latest(metrics.registry).decode()


def test_it_reads_the_queue_the_batch_and_the_buckets_of_the_runtimes_metrics() -> None:
    p = publisher()
    reading = p.Reading()
    reading.add(exposition([0.2, 0.4], queued=3, running=5))
    reading.add(exposition([0.2], queued=1, running=2))  # a second instance on the host: summed
    assert (reading.queued, reading.running) == (4, 7)
    assert reading.ttft_buckets[math.inf] == 3


def test_the_p90_covers_only_what_happened_between_two_readings() -> None:
    p = publisher()
    before, after = p.Reading(), p.Reading()
    before.add(exposition([30.0] * 50))  # slow first tokens, before the interval
    after.add(exposition([30.0] * 50 + [0.2] * 10))
    p90 = p.quantile(0.9, before.ttft_buckets, after.ttft_buckets)
    assert p90 is not None
    assert 0 < p90 <= 0.25  # the interval's ten fast ones only
    assert p.quantile(0.9, after.ttft_buckets, after.ttft_buckets) is None  # nothing new: no data point
    assert p.quantile(0.9, after.ttft_buckets, before.ttft_buckets) is None  # a restart: no data point


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_the_quantile_is_prometheus_histogram_quantile(q: float, tmp_path: Path) -> None:
    """promtool evaluates histogram_quantile over the same cumulative buckets: the same value, to the
    last bits (the two compute the interpolation in different orders)."""
    p = publisher()
    text = exposition([0.01, 0.05, 0.05, 0.1, 0.3, 0.3, 0.7, 1.5, 2.0, 9.0, 0.02, 0.04])
    after = p.Reading()
    after.add(text)
    ours = p.quantile(q, {}, after.ttft_buckets)
    series = [
        {"series": f'ttft_bucket{{le="{"+Inf" if math.isinf(le) else le}"}}', "values": f"0 {count:g}"}
        for le, count in sorted(after.ttft_buckets.items())
    ]
    test = {
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [{
                "expr": f"histogram_quantile({q}, rate(ttft_bucket[1m]))",
                "eval_time": "1m",
                "exp_samples": [{"labels": "{}", "value": -1}],  # wrong on purpose: promtool prints its own
            }],
        }],
    }  # fmt: skip
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    checked = subprocess.run(
        ["promtool", "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    got = re.search(r"got: \{\} (\S+)", checked.stdout + checked.stderr)
    assert got, checked.stdout + checked.stderr
    assert ours == pytest.approx(float(got.group(1)), rel=1e-12)


def test_the_data_points_name_the_fleet_and_leave_out_a_p90_of_nothing() -> None:
    p = publisher()
    reading = p.Reading()
    reading.add(exposition([], queued=2, running=4))
    data = p.metric_data(reading, reading, {"Fleet": "model-runtime-dev"})
    assert [(d["MetricName"], d["Value"], d["Unit"]) for d in data] == [
        ("QueueDepth", 2, "Count"), ("RunningBatch", 4, "Count")
    ]  # fmt: skip
    assert all(d["Dimensions"] == [{"Name": "Fleet", "Value": "model-runtime-dev"}] for d in data)
