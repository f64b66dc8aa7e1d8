"""Every refusal is an OpenAI error envelope with the right status, naming the parameter; none is a 500."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest

from harness.load import Load
from harness.server import API_KEY, RuntimeProcess, metric_value
from tests.support.engines import ENGINES, engine_settings

pytestmark = pytest.mark.e2e


def envelope(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_missing_and_wrong_key(engine_server: RuntimeProcess) -> None:
    with pytest.raises(openai.AuthenticationError) as wrong:
        engine_server.client(api_key="not-the-key").models.list()
    assert wrong.value.status_code == 401
    assert wrong.value.body["code"] == "invalid_api_key"
    missing = httpx.get(f"{engine_server.base_url}/v1/models")
    assert missing.status_code == 401
    assert envelope(missing)["code"] == "missing_api_key"
    # Probes and scrapers need no key.
    assert httpx.get(f"{engine_server.base_url}/health/live").status_code == 200
    assert httpx.get(f"{engine_server.internal_url}/metrics").status_code == 200


def test_unknown_model_is_404(engine_server: RuntimeProcess) -> None:
    with pytest.raises(openai.NotFoundError) as error:
        engine_server.client().completions.create(model="gpt-9", prompt="x", max_tokens=2)
    assert error.value.body["param"] == "model"
    assert error.value.body["code"] == "model_not_found"


LONG_PROMPT = "You may copy and distribute " * 200


@pytest.mark.parametrize(
    ("kwargs", "param", "fragment"),
    [
        ({"prompt": LONG_PROMPT}, "prompt", "maximum context length is 512"),
        ({"prompt": "Hi", "max_tokens": 600}, "max_tokens", "max_tokens is too large: 600"),
        ({"prompt": "Hi", "temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"prompt": "Hi", "temperature": -1}, "temperature", "greater than or equal to 0"),
        ({"prompt": "Hi", "top_p": 1.5}, "top_p", "less than or equal to 1"),
        ({"prompt": ""}, "prompt", "must not be empty"),
        ({"prompt": []}, "prompt", "must not be empty"),
        ({"prompt": "Hi", "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"prompt": "Hi", "n": 0}, "n", "greater than or equal to 1"),
        ({"prompt": "Hi", "n": 100}, "n", "n is too large"),
        ({"prompt": "Hi", "max_tokens": "ten"}, "max_tokens", "valid integer"),
        ({"prompt": "Hi", "stop": ["a", ""]}, "stop", "must not be empty"),
        ({"prompt": [[1, 2, 999999]]}, "prompt", "outside this model's vocabulary"),
        ({"prompt": "Hi", "logit_bias": {"x": 1}}, "logit_bias", "not a token id"),
        ({"prompt": "Hi", "echo": True}, "echo", "not supported"),
    ],
)
def test_completion_400_names_the_parameter(
    engine_server: RuntimeProcess, kwargs: dict, param: str, fragment: str
) -> None:
    with engine_server.http() as http:
        response = http.post("/v1/completions", json={"model": "demo", **kwargs})
    assert response.status_code == 400, response.text
    error = envelope(response)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert fragment in error["message"]


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"messages": []}, "messages", "must not be empty"),
        ({}, "messages", "messages is required"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", "Input should be"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", ""),
        (
            {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 9999},
            "max_completion_tokens",
            "too large",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
            "tools",
            "not supported",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2},
            "top_logprobs",
            "requires logprobs",
        ),
    ],
)
def test_chat_400_names_the_parameter(
    engine_server: RuntimeProcess, body: dict, param: str, fragment: str
) -> None:
    with engine_server.http() as http:
        response = http.post("/v1/chat/completions", json={"model": "demo", **body})
    assert response.status_code == 400, response.text
    error = envelope(response)
    assert error["param"] == param
    assert fragment in error["message"]


def test_malformed_json_and_wrong_shapes(engine_server: RuntimeProcess) -> None:
    with engine_server.http() as http:
        broken = http.post(
            "/v1/completions",
            content=b'{"model": "demo", "prompt": ',
            headers={"content-type": "application/json"},
        )
        not_object = http.post("/v1/completions", json=["model", "demo"])
        not_json = http.post(
            "/v1/chat/completions", content=b"\xff\xfe", headers={"content-type": "application/json"}
        )
    assert broken.status_code == 400
    assert envelope(broken)["code"] == "invalid_json"
    assert not_object.status_code == 400
    assert "JSON object" in envelope(not_object)["message"]
    assert not_json.status_code == 400


def test_oversized_body_is_413(engine_server: RuntimeProcess) -> None:
    with engine_server.http() as http:
        response = http.post("/v1/completions", json={"model": "demo", "prompt": "x" * (5 * 1024 * 1024)})
    assert response.status_code == 413
    assert envelope(response)["code"] == "request_too_large"


def test_unknown_route_and_method(engine_server: RuntimeProcess) -> None:
    with engine_server.http() as http:
        assert envelope(http.get("/v1/nothing-here"))["code"] == "not_found"
        assert envelope(http.get("/v1/completions"))["code"] == "method_not_allowed"


@pytest.mark.parametrize("engine", ENGINES)
def test_full_queue_is_429_with_retry_after(
    engine: str, medium_llama: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = engine_settings(engine, request)
    settings["scheduler"] = {"max_batch_size": 1, "max_queue": 0}
    server = RuntimeProcess(medium_llama, tmp_path, settings, name="slow").start(timeout=600)
    try:
        client = server.client()
        stream = client.completions.create(
            model="slow", prompt="Hi", max_tokens=400, stream=True, extra_body={"ignore_eos": True}
        )
        first = next(iter(stream))  # the one batch slot is now taken
        assert first.choices[0].text is not None
        with pytest.raises(openai.RateLimitError) as refused:
            client.completions.create(model="slow", prompt="Hi", max_tokens=2)
        assert refused.value.status_code == 429
        assert int(refused.value.response.headers["retry-after"]) >= 1
        assert refused.value.body["code"] == "queue_full"
        stream.close()  # disconnecting frees the slot: generation stops
        deadline = time.monotonic() + 20
        while True:
            try:
                done = client.completions.create(model="slow", prompt="Hi", max_tokens=2)
                break
            except openai.RateLimitError:
                assert time.monotonic() < deadline, "the slot was never freed after the client left"
                time.sleep(0.05)
        assert done.choices[0].finish_reason in ("length", "stop")
        generated = metric_value(server, "model_runtime_generation_tokens_total")
        assert generated < 400, "the abandoned stream kept generating"
    finally:
        assert server.stop() == 0


def test_no_5xx_under_concurrent_mixed_load(engine_server: RuntimeProcess) -> None:
    """A burst of good and bad requests at once: every answer is 200 or a 4xx envelope."""
    bodies = [
        {"model": "demo", "prompt": "You may", "max_tokens": 8},
        {"model": "demo", "prompt": "You may", "max_tokens": 8, "stream": True},
        {"model": "demo", "prompt": "", "max_tokens": 8},
        {"model": "demo", "prompt": LONG_PROMPT},
        {"model": "nope", "prompt": "x"},
        {"model": "demo", "prompt": "x", "temperature": "hot"},
    ]
    burst = Load(engine_server.base_url, bodies * 6, clients=12, api_key=API_KEY).run()
    statuses = [outcome.status for outcome in burst.outcomes]
    assert len(statuses) == 36
    assert all(s == 200 or 400 <= s < 500 for s in statuses), statuses


BOUND_BODIES = {
    "/v1/completions": {"model": "demo", "prompt": "You may", "max_tokens": 2},
    "/v1/chat/completions": {
        "model": "demo",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 2,
    },
}


@pytest.mark.parametrize("path", list(BOUND_BODIES))
@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"logit_bias": {"²": 1}}, "not a token id"),  # str.isdigit takes it, int() does not
        ({"logit_bias": {"٣": 1}}, "not a token id"),  # both take it; only ASCII digits are ids
        ({"logit_bias": {"-1": 1}}, "not a token id"),
        ({"logit_bias": {" 7": 1}}, "not a token id"),
        ({"logit_bias": {"2048": 1}}, "not a token id of this model (0..2047)"),
        ({"logit_bias": {"5": 100.5}}, "outside [-100, 100]"),
        ({"logit_bias": {str(t): 1 for t in range(301)}}, "at most 300 entries"),
        ({"stop": "x" * 257}, "at most 256 characters"),
        ({"stop": ["ok", "x" * 257]}, "at most 256 characters"),
        ({"stop": ["x"] * 17}, "at most 16 stop sequences"),
        ({"seed": 2**63}, "seed: Input should be less than"),
    ],
)
def test_bounds_on_per_token_work_are_400s_naming_the_parameter(
    engine_server: RuntimeProcess, path: str, extra: dict, fragment: str
) -> None:
    with engine_server.http() as http:
        response = http.post(path, json={**BOUND_BODIES[path], **extra})
    assert response.status_code == 400, response.text
    error = envelope(response)
    assert error["param"] == next(iter(extra))
    assert fragment in error["message"]


@pytest.mark.parametrize("path", list(BOUND_BODIES))
def test_requests_at_the_bounds_are_served(engine_server: RuntimeProcess, path: str) -> None:
    at_the_bounds = {
        "logit_bias": {str(t): -1 for t in range(300)},
        "stop": [chr(0x4E00 + i) * 256 for i in range(16)],
        "seed": 2**63 - 1,
        "n": 2,  # the second choice's seed is 2**63
        "temperature": 1.0,
    }
    with engine_server.http() as http:
        response = http.post(path, json={**BOUND_BODIES[path], **at_the_bounds})
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 2
