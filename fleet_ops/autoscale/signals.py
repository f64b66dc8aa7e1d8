"""The autoscaler's readings, from the fleet's Prometheus: the serving replicas (the runtime targets it
scrapes, which every scale run rewrites) and, averaged over a window, the sequences waiting and running,
the refusals and the time to first token's p90; with a burst backend, the requests in flight there (the
load balancers' own sessions: the cloud's metrics are in CloudWatch, not here). In a fleet of several
models, the readings of one model's instances only (an instance serves one model)."""

from __future__ import annotations

import math

from fleet_ops.autoscale.policy import Signals
from fleet_ops.prometheus import Prometheus

JOB = 'job="model-runtime"'


def _of(model: str | None, expr: str) -> str:
    """expr's series of the instances that serve model (each says which it loaded); every series when
    model is None."""
    if model is None:
        return expr
    return f'({expr} and on(instance) model_runtime_model_load_seconds{{{JOB}, model="{model}"}})'


def queries(window_s: int, burst_backend: str | None = None, model: str | None = None) -> dict[str, str]:
    window = f"{window_s}s"
    burst = {
        "burst_running": (
            f'sum(avg_over_time(haproxy_backend_current_sessions{{proxy="{burst_backend}"}}[{window}]))'
        )
    }
    up = f"up{{{JOB}}}"
    queued = f"avg_over_time(model_runtime_queue_depth{{{JOB}}}[{window}])"
    running = f"avg_over_time(model_runtime_running_batch_size{{{JOB}}}[{window}])"
    refused = f'rate(model_runtime_requests_total{{{JOB}, status="429"}}[{window}])'
    ttft = f"rate(model_runtime_time_to_first_token_seconds_bucket{{{JOB}}}[{window}])"
    return {
        "replicas": f"count({_of(model, up)})",
        "queued": f"sum({_of(model, queued)})",
        "running": f"sum({_of(model, running)})",
        "refused_per_s": f"sum({_of(model, refused)})",
        "ttft_p90_s": f"histogram_quantile(0.9, sum by (le) ({_of(model, ttft)}))",
        **(burst if burst_backend else {}),
    }


def read_signals(
    prometheus: Prometheus, window_s: int, burst_backend: str | None = None, model: str | None = None
) -> Signals:
    """One reading (of model's instances, or of all). A series with no sample (no instance yet, no
    refusal ever) counts as 0; the p90 of a window without first tokens is None (Prometheus answers
    NaN)."""
    values = {name: prometheus.value(expr) for name, expr in queries(window_s, burst_backend, model).items()}
    ttft = values["ttft_p90_s"]
    return Signals(
        replicas=int(values["replicas"] or 0),
        queued=values["queued"] or 0.0,
        running=values["running"] or 0.0,
        refused_per_s=values["refused_per_s"] or 0.0,
        ttft_p90_s=None if ttft is None or math.isnan(ttft) else ttft,
        burst_running=values.get("burst_running") or 0.0,
    )
