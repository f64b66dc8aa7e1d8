from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.processes import role, tree
from harness.server import RuntimeProcess, engine_pid, metric_value
from tests.support.engines import ENGINES, engine_settings

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("engine", ENGINES)
def test_sigterm_lets_the_stream_finish_then_exits_zero(
    engine: str, medium_llama: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = engine_settings(engine, request)
    settings["server"] = {"shutdown_grace_s": 60}
    server = RuntimeProcess(medium_llama, tmp_path, settings, name="slow").start(timeout=600)
    try:
        client = server.client()
        stream = client.completions.create(
            model="slow", prompt="Hi", max_tokens=300, stream=True, extra_body={"ignore_eos": True}
        )
        chunks = iter(stream)
        first = next(chunks)
        server.signal(signal.SIGTERM)
        # Readiness turns 503 at once, and new work is refused with 503 while the stream goes on.
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.base_url}/health/ready").status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert httpx.get(f"{server.base_url}/health/ready").json()["status"] == "draining"
        assert httpx.get(f"{server.base_url}/health/live").status_code == 200
        with pytest.raises(openai.InternalServerError) as refused:
            client.completions.create(model="slow", prompt="Hi", max_tokens=2)
        assert refused.value.status_code == 503
        assert refused.value.body["code"] == "draining"
        rest = list(chunks)
        text = first.choices[0].text + "".join(c.choices[0].text for c in rest if c.choices)
        assert rest[-1].choices[0].finish_reason == "length"
        assert text
        assert server.process.wait(30) == 0
    finally:
        server.stop()


def test_metrics_parse_and_move(engine_server: RuntimeProcess, request: pytest.FixtureRequest) -> None:
    scraped = httpx.get(f"{engine_server.internal_url}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(scraped)}
    if request.node.callspec.params["engine_server"] == "vllm":  # vLLM's own metrics, beside ours
        assert {"vllm:num_requests_running", "vllm:kv_cache_usage_perc"} <= families.keys(), sorted(families)
    for name in (
        "model_runtime_requests",
        "model_runtime_queue_depth",
        "model_runtime_running_batch_size",
        "model_runtime_time_to_first_token_seconds",
        "model_runtime_inter_token_latency_seconds",
        "model_runtime_prompt_tokens",
        "model_runtime_generation_tokens",
        "model_runtime_model_load_seconds",
    ):
        assert name in families, name
    assert metric_value(engine_server, "model_runtime_model_load_seconds", model="demo", version="test") > 0

    before_requests = metric_value(
        engine_server, "model_runtime_requests_total", endpoint="/v1/completions", status="200"
    )
    before_tokens = metric_value(engine_server, "model_runtime_generation_tokens_total", model="demo")
    before_ttft = metric_value(engine_server, "model_runtime_time_to_first_token_seconds_count", model="demo")
    before_itl = metric_value(engine_server, "model_runtime_inter_token_latency_seconds_count", model="demo")
    engine_server.client().completions.create(
        model="demo", prompt="This", max_tokens=6, extra_body={"ignore_eos": True}
    )
    after = lambda name, **labels: metric_value(engine_server, name, **labels)  # noqa: E731
    assert (
        after("model_runtime_requests_total", endpoint="/v1/completions", status="200") == before_requests + 1
    )
    assert after("model_runtime_generation_tokens_total", model="demo") == before_tokens + 6
    assert after("model_runtime_time_to_first_token_seconds_count", model="demo") == before_ttft + 1
    assert after("model_runtime_inter_token_latency_seconds_count", model="demo") == before_itl + 5
    with pytest.raises(openai.BadRequestError):
        engine_server.client().completions.create(model="demo", prompt="", max_tokens=2)
    assert after("model_runtime_requests_total", endpoint="/v1/completions", status="400") >= 1


def test_request_id_is_echoed(demo_server: RuntimeProcess) -> None:
    response = httpx.get(f"{demo_server.base_url}/health/live", headers={"X-Request-Id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert len(httpx.get(f"{demo_server.base_url}/health/live").headers["x-request-id"]) == 32


@pytest.mark.parametrize("engine", ENGINES)
def test_a_dead_engine_ends_every_request_with_an_error_then_the_process(
    engine: str, medium_llama: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server = RuntimeProcess(medium_llama, tmp_path, engine_settings(engine, request), name="slow").start(
        timeout=600
    )
    try:
        stream = server.client().completions.create(
            model="slow", prompt="Hi", max_tokens=300, stream=True, extra_body={"ignore_eos": True}
        )
        chunks = iter(stream)
        next(chunks)
        # The builtin engine's process forks from the runtime's fork server; a vLLM replica has none.
        fork_server = "engine fork server" in {role(pid) for pid in tree(server.process.pid)}
        assert fork_server == (engine == "builtin")
        if engine == "builtin":
            os.kill(server.engine_pid(), signal.SIGKILL)
        else:  # vLLM's engine core dies under our vLLM process, which then ends itself
            worker = engine_pid(server.process.pid, "model_runtime.vllm.worker")
            os.kill(engine_pid(worker, "EngineCore"), signal.SIGKILL)  # vLLM titles its processes
        # The stream ends with the error event, not a cut connection (nor a hang).
        with pytest.raises(openai.APIError) as ended:
            list(chunks)
        assert type(ended.value) is openai.APIError, repr(ended.value)
        assert "engine" in str(ended.value)
        assert server.process.wait(30) != 0  # a replica without its engine exits and is restarted
    finally:
        server.stop()
