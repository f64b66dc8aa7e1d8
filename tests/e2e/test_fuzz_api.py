"""Schemathesis against a real server, with every check: generated requests, valid and invalid, to every
operation of the OpenAPI document the server publishes. No answer may be a 5xx, break its documented
schema, status, content type or headers; a request the document calls valid must be served, one it
calls invalid refused; the server must still be ready afterwards.

Two phases: fuzzing (Hypothesis draws bodies) and coverage (Schemathesis walks every bound the
document declares, one at a time: each minimum, maximum and length, just inside and just outside).
`model` is pinned to the served name in the document the requests are drawn from, so that they reach
the model instead of ending as a 404 for an unknown one. Valid bodies are drawn from that document
narrowed further by what only the served model decides (its vocabulary, and a prompt that fits its
context); invalid ones from the document as published, so that every bound it declares is tried.

Bounded for CI on 2 cores: a fixed number of cases per operation, derandomized (same cases every run),
and a server whose own limits keep generation short: a 64-token context, at most 2 choices, and 4 + 4
sequences in flight.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from transformers import AutoTokenizer

from harness.server import API_KEY, RuntimeProcess

pytestmark = pytest.mark.e2e

SERVED = "demo"
CONTEXT = 64
AUTH = {"Authorization": f"Bearer {API_KEY}"}
GENERATION = {"/v1/completions": "CompletionRequest", "/v1/chat/completions": "ChatCompletionRequest"}
cases_run: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzzed_server(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    server = RuntimeProcess(
        demo_model,
        tmp_path_factory.mktemp("fuzz"),
        {
            "model": {"max_context": CONTEXT},
            "scheduler": {"max_n": 2, "max_batch_size": 4, "max_queue": 4},
        },
        name=SERVED,
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def published(fuzzed_server: RuntimeProcess) -> dict[str, Any]:
    return httpx.get(f"{fuzzed_server.internal_url}/openapi.json").json()  # not on the API's listener


def pinned(document: dict[str, Any]) -> dict[str, Any]:
    """The document with `model` pinned to the served name: a random name is a 404 before anything
    else about the request is looked at."""
    pinned = copy.deepcopy(document)
    for request in GENERATION.values():
        pinned["components"]["schemas"][request]["properties"]["model"] = {"type": "string", "enum": [SERVED]}
    return pinned


def within_the_served_model(document: dict[str, Any], vocab: int) -> dict[str, Any]:
    """Valid bodies for the served model: what the document cannot say because it depends on the model
    (token ids below its vocabulary, prompt and budget within its context, no ensemble), and the rules
    between two fields that the document states in words (best_of equals n; top_logprobs needs
    logprobs). Byte-level BPE makes at most 4 tokens of a character."""
    narrowed = pinned(document)
    schemas = narrowed["components"]["schemas"]
    token_ids = {
        "type": "array",
        "minItems": 1,
        "maxItems": 48,
        "items": {"type": "integer", "minimum": 0, "maximum": vocab - 1},
    }
    text = {"type": "string", "minLength": 1, "maxLength": 12}  # 48 tokens, and 16 to generate
    bias_keys = f"^[0-9]{{1,{len(str(vocab)) - 1}}}$"  # ids below a power of ten under vocab
    common = {
        "logit_bias": {
            "anyOf": [
                {
                    "type": "object",
                    "maxProperties": 300,
                    "propertyNames": {"pattern": bias_keys},
                    "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
                },
                {"type": "null"},
            ]
        },
        "ensemble_members": {"const": False},
    }
    schemas["CompletionRequest"]["properties"].update(
        common,
        prompt={
            "anyOf": [
                text,
                {"type": "array", "minItems": 1, "maxItems": 4, "items": text},
                token_ids,
                {"type": "array", "minItems": 1, "maxItems": 4, "items": token_ids},
            ]
        },
        max_tokens={"type": "integer", "minimum": 1, "maximum": 16},
        best_of={"type": "null"},
    )
    # Each message costs 3 tokens of template and the reply 1: 2 x (3 + 24) + 1 + 8 <= 64.
    chat = schemas["ChatCompletionRequest"]
    chat["properties"].update(
        common,
        messages={
            "type": "array",
            "minItems": 1,
            "maxItems": 2,
            "items": {"$ref": "#/components/schemas/ChatMessage"},
        },
        max_tokens={"type": "integer", "minimum": 1, "maximum": 8},
        max_completion_tokens={"type": "integer", "minimum": 1, "maximum": 8},
        top_logprobs={"type": "null"},
    )
    # A reply budget in every body: without one a reply takes all the context leaves (slow, still valid).
    chat["required"] = sorted({*chat.get("required", []), "max_completion_tokens"})
    schemas["ChatMessage"]["properties"]["content"] = {
        "anyOf": [
            {"type": "string", "maxLength": 6},
            {"type": "array", "maxItems": 2, "items": {"$ref": "#/components/schemas/TextPart"}},
            {"type": "null"},
        ]
    }
    schemas["TextPart"]["properties"]["text"] = {"type": "string", "maxLength": 3}
    return narrowed


def _load(document: dict[str, Any], server: RuntimeProcess) -> schemathesis.BaseSchema:
    # Every check, at its default expectations.
    config = schemathesis.Config.from_dict({"base-url": server.base_url})
    return schemathesis.openapi.from_dict(document, config=config)


@pytest.fixture(scope="module")
def valid_bodies(
    fuzzed_server: RuntimeProcess, published: dict[str, Any], demo_model: Path
) -> schemathesis.BaseSchema:
    vocab = len(AutoTokenizer.from_pretrained(demo_model))
    return _load(within_the_served_model(published, vocab), fuzzed_server)


@pytest.fixture(scope="module")
def invalid_bodies(fuzzed_server: RuntimeProcess, published: dict[str, Any]) -> schemathesis.BaseSchema:
    return _load(pinned(published), fuzzed_server)


def _call(case: schemathesis.Case) -> None:
    case.call_and_validate(headers=AUTH, timeout=60)


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
]


def test_every_operation_is_fuzzed(invalid_bodies: schemathesis.BaseSchema) -> None:
    documented = {(op.ok().method.upper(), op.ok().path) for op in invalid_bodies.get_all_operations()}
    assert documented == {(method, path) for method, path, _, _ in OPERATIONS}


@pytest.mark.parametrize(("method", "path", "mode", "cases"), OPERATIONS)
def test_api_keeps_its_contract(
    fuzzed_server: RuntimeProcess,
    valid_bodies: schemathesis.BaseSchema,
    invalid_bodies: schemathesis.BaseSchema,
    method: str,
    path: str,
    mode: GenerationMode,
    cases: int,
) -> None:
    schema = valid_bodies if mode is GenerationMode.POSITIVE else invalid_bodies

    @given(case=schema[path][method].as_strategy(generation_mode=mode))
    @settings(
        max_examples=cases,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def call(case: schemathesis.Case) -> None:
        _call(case)
        cases_run[f"{method} {path} {mode.value}"] += 1

    call()
    assert cases_run[f"{method} {path} {mode.value}"] > 0


# The coverage phase: each generation endpoint's bounds, valid bodies on and just inside them, invalid
# ones just outside (a seed of 2**63, a 257-character stop sequence, 301 logit_bias entries, ...).
# Drawn with the schema's own iter_coverage_cases: Schemathesis' pytest parametrize() of a schema
# from a fixture, which would run this phase, reads a node attribute pytest 9 no longer has.
@pytest.mark.parametrize("path", list(GENERATION))
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_bound_of_the_document_holds(
    fuzzed_server: RuntimeProcess,
    valid_bodies: schemathesis.BaseSchema,
    invalid_bodies: schemathesis.BaseSchema,
    path: str,
    mode: GenerationMode,
) -> None:
    schema = valid_bodies if mode is GenerationMode.POSITIVE else invalid_bodies
    operation = schema[path]["POST"]
    generation = schema.config.generation_for(operation=operation)
    for case in schema.iter_coverage_cases(operation, generation_modes=[mode], generation_config=generation):
        _call(case)
        cases_run[f"coverage {path} {mode.value}"] += 1
    assert cases_run[f"coverage {path} {mode.value}"] > 0


def test_the_document_says_how_the_server_refuses(published: dict[str, Any]) -> None:
    document = published
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


def test_the_document_declares_the_bounds_exactly(published: dict[str, Any]) -> None:
    """Integers past 2**53 as written (FastAPI alone would write the seed's maximum as a float), and the
    bounds on what a request asks of every token."""
    for request in GENERATION.values():
        properties = published["components"]["schemas"][request]["properties"]
        seed = properties["seed"]["anyOf"][0]
        assert (seed["minimum"], seed["maximum"]) == (-(2**63), 2**63 - 1)
        assert properties["n"]["maximum"] == 2  # this server's max_n
        single, several = properties["stop"]["anyOf"][:2]
        assert (single["minLength"], single["maxLength"]) == (1, 256)
        assert several["maxItems"] == 16
        assert several["items"] == single
        bias = properties["logit_bias"]["anyOf"][0]
        assert bias["maxProperties"] == 300
        assert bias["propertyNames"] == {"pattern": "^[0-9]+$"}


def test_an_undocumented_method_is_a_405_that_names_the_allowed_ones(
    fuzzed_server: RuntimeProcess, invalid_bodies: schemathesis.BaseSchema
) -> None:
    documented: dict[str, set[str]] = {}
    for result in invalid_bodies.get_all_operations():
        operation = result.ok()
        documented.setdefault(operation.path, set()).add(operation.method.upper())
    for path, methods in documented.items():
        refused = httpx.put(f"{fuzzed_server.base_url}{path}", headers=AUTH)
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
