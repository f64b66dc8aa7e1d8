"""Schemathesis against a real server: generated requests, valid and invalid, to every operation of the
OpenAPI document the server publishes. No answer may be a 5xx, break its documented schema, status,
content type or headers, and the server must still be ready afterwards.

Bounded for CI on 2 cores: a fixed number of cases per operation, derandomized (same cases every run),
and a server whose own limits keep generation short: a 64-token context (so no request generates more
than that), at most 2 choices, and 4 + 4 sequences in flight. These are limits the server enforces, so
the fuzzer meets them as 400s rather than having them hidden in the schema.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.support.server import API_KEY, RuntimeProcess

pytestmark = pytest.mark.e2e

SERVED = "demo"
CONFIG = {
    "checks": {
        # Valid-by-schema is not enough to be served: the model name, the context length and the
        # vocabulary are only known at run time, so a 400 for a schema-valid body is right here.
        "positive_data_acceptance": {"enabled": False},
    },
}
cases_run: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzzed_server(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    server = RuntimeProcess(
        demo_model,
        tmp_path_factory.mktemp("fuzz"),
        {
            "model": {"max_context": 64},
            "scheduler": {"max_n": 2, "max_batch_size": 4, "max_queue": 4},
        },
        name=SERVED,
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api_schema(fuzzed_server: RuntimeProcess) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(
        f"{fuzzed_server.base_url}/openapi.json", config=schemathesis.Config.from_dict(CONFIG)
    )


# Every operation of the document, with the generation modes that apply and a case budget: the GET
# operations take no input, so they have no invalid requests and few distinct valid ones.
# test_every_operation_is_fuzzed keeps this list complete.
OPERATIONS = [
    ("POST", "/v1/completions", GenerationMode.POSITIVE, 80),
    ("POST", "/v1/completions", GenerationMode.NEGATIVE, 80),
    ("POST", "/v1/chat/completions", GenerationMode.POSITIVE, 80),
    ("POST", "/v1/chat/completions", GenerationMode.NEGATIVE, 80),
    ("GET", "/v1/models", GenerationMode.POSITIVE, 5),
    ("GET", "/health/live", GenerationMode.POSITIVE, 5),
    ("GET", "/health/ready", GenerationMode.POSITIVE, 5),
    ("GET", "/metrics", GenerationMode.POSITIVE, 5),
]


def test_every_operation_is_fuzzed(api_schema: schemathesis.BaseSchema) -> None:
    documented = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert documented == {(method, path) for method, path, _, _ in OPERATIONS}


@pytest.mark.parametrize(("method", "path", "mode", "cases"), OPERATIONS)
def test_api_keeps_its_contract(
    api_schema: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode, cases: int
) -> None:
    @given(case=api_schema[path][method].as_strategy(generation_mode=mode))
    @settings(
        max_examples=cases,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def call(case: schemathesis.Case) -> None:
        body = case.body
        if mode is GenerationMode.POSITIVE and isinstance(body, dict) and "model" in body:
            # A random model name is a 404 before anything is generated; valid bodies go to the model.
            body["model"] = SERVED
        case.call_and_validate(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
        cases_run[f"{method} {path} {mode.value}"] += 1

    call()
    assert cases_run[f"{method} {path} {mode.value}"] > 0


def test_the_document_says_how_the_server_refuses(fuzzed_server: RuntimeProcess) -> None:
    document = httpx.get(f"{fuzzed_server.base_url}/openapi.json").json()
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, f"{method} {path}: validation failures are 400 here"
            if path.startswith("/v1/"):
                assert operation["security"] == [{"HTTPBearer": []}], f"{method} {path}"
                assert {"401", "413"} <= set(responses), f"{method} {path}"
            for status in ("429", "503"):
                if status in responses and path.startswith("/v1/"):
                    assert responses[status]["headers"]["Retry-After"]["required"], f"{method} {path}"
    for path in ("/v1/completions", "/v1/chat/completions"):
        answers = document["paths"][path]["post"]["responses"]
        assert {"400", "404", "429", "503", "504"} <= set(answers)
        assert set(answers["200"]["content"]) == {"application/json", "text/event-stream"}


def test_an_undocumented_method_is_a_405_that_names_the_allowed_ones(
    fuzzed_server: RuntimeProcess, api_schema: schemathesis.BaseSchema
) -> None:
    documented: dict[str, set[str]] = {}
    for result in api_schema.get_all_operations():
        operation = result.ok()
        documented.setdefault(operation.path, set()).add(operation.method.upper())
    with fuzzed_server.http() as http:
        for path, methods in documented.items():
            refused = http.request("PUT", path)
            assert refused.status_code == 405, path
            assert refused.json()["error"]["code"] == "method_not_allowed"
            assert set(refused.headers["allow"].replace(" ", "").split(",")) >= methods, path


def test_server_still_serves_after_fuzzing(fuzzed_server: RuntimeProcess) -> None:
    print(f"fuzz cases run: {sum(cases_run.values())} {dict(cases_run)}")
    assert fuzzed_server.process is not None
    assert fuzzed_server.process.poll() is None, fuzzed_server.log()
    assert httpx.get(f"{fuzzed_server.base_url}/health/ready", timeout=5).status_code == 200
    with fuzzed_server.http() as http:
        answer = http.post("/v1/completions", json={"model": SERVED, "prompt": "You may", "max_tokens": 4})
    assert answer.status_code == 200, answer.text
    assert "Traceback" not in fuzzed_server.log()
