"""Prometheus metrics of one server process, in a registry of its own (several apps can share a test
process), exposed at GET /metrics on the internal listener (server.metrics_host, server.metrics_port)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from model_runtime import __version__
from model_runtime.access import PRIORITIES
from model_runtime.scheduler.worker.parent import StepObserver

# Token latencies on CPU span a millisecond (tiny model, one stream) to a second (big batch).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A whole request: a refusal in milliseconds up to a long stream (request_timeout_s is 600 by default).
_REQUEST_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class RuntimeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "model_runtime_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "model_runtime_request_duration_seconds",
            "Generation requests, arrival to last byte (streams included), by endpoint",
            ["endpoint"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "model_runtime_requests_in_flight",
            "Generation requests between arrival and last byte",
            registry=r,
        )
        self.queue_depth = Gauge(
            "model_runtime_queue_depth",
            "Sequences waiting for a batch slot, by the priority class of their key",
            ["model", "priority"],
            registry=r,
        )
        self.batch_size = Gauge(
            "model_runtime_running_batch_size", "Sequences in the running batch", ["model"], registry=r
        )
        self.ttft = Histogram(
            "model_runtime_time_to_first_token_seconds",
            "Arrival to first generated token",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "model_runtime_inter_token_latency_seconds",
            "Time between two tokens of one sequence",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "model_runtime_prompt_tokens", "Prompt tokens prefilled", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            "model_runtime_generation_tokens", "Tokens generated", ["model"], registry=r
        )
        self.load_seconds = Gauge(
            "model_runtime_model_load_seconds", "Time to load the model", ["model", "version"], registry=r
        )
        self.ready = Gauge("model_runtime_ready", "1 when /health/ready answers 200", registry=r)
        self.process_starts = Counter(
            "model_runtime_process_starts",
            "Starts of this instance's process, counted across restarts in server.state_dir",
            registry=r,
        )
        self.info = Gauge("model_runtime_info", "Runtime version", ["version"], registry=r)
        self.info.labels(version=__version__).set(1)

    def for_model(self, name: str) -> ModelMetrics:
        return ModelMetrics(self, name)

    def read_engine_metrics(self, folder: Path) -> Callable[[], None]:
        """Expose, beside ours, the metrics that an engine process of another environment writes to
        folder (vLLM's own, in Prometheus's multiprocess format). Returns what stops it."""
        collector = MultiProcessCollector(None, path=str(folder))
        self.registry.register(collector)
        return lambda: self.registry.unregister(collector)


class ModelMetrics(StepObserver):
    """What the engine process's steps tell the metrics of one model (its label bound once)."""

    def __init__(self, metrics: RuntimeMetrics, model: str) -> None:
        self._queues = [metrics.queue_depth.labels(model=model, priority=p) for p in PRIORITIES]
        self._batch = metrics.batch_size.labels(model=model)
        self._ttft = metrics.ttft.labels(model=model)
        self._itl = metrics.itl.labels(model=model)
        self._prompt = metrics.prompt_tokens.labels(model=model)
        self._generated = metrics.generation_tokens.labels(model=model)

    def observe_step(self, waiting: tuple[int, ...], running: int) -> None:
        for queue, depth in zip(self._queues, waiting, strict=True):
            queue.set(depth)
        self._batch.set(running)

    def observe_first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def observe_inter_token(self, seconds: float) -> None:
        self._itl.observe(seconds)

    def count_tokens(self, prompt: int, generated: int) -> None:
        if prompt:
            self._prompt.inc(prompt)
        if generated:
            self._generated.inc(generated)


router = APIRouter()


# Not in the OpenAPI document, which describes the API that clients reach (the public listener).
@router.get("/metrics", response_class=Response, include_in_schema=False)
def metrics(request: Request) -> Response:
    registry = request.app.state.runtime.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
