"""Request validation, as a property: whatever JSON a client sends to a generation endpoint, the server
either accepts it as the request model does or answers 400 with the OpenAI envelope naming the
parameter at fault; nothing raises. Checked through the real FastAPI app, in process: no model is
served, so a body that validates reaches the handler and ends as 404 for its model."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from model_runtime.access import OPEN
from model_runtime.config import Settings
from model_runtime.server.app import create_app
from model_runtime.server.protocol import ChatCompletionRequest, CompletionRequest
from model_runtime.server.state import RuntimeState, ServedModel

pytestmark = pytest.mark.unit

KEY = "property-key"
ENDPOINTS = {"/v1/completions": CompletionRequest, "/v1/chat/completions": ChatCompletionRequest}


def _never_loaded(_model: object) -> ServedModel:
    raise AssertionError("the app's lifespan is not run here, so no model is ever loaded")


@pytest.fixture(scope="module")
def client() -> TestClient:
    runtime = RuntimeState(Settings.model_validate({"model": {"path": "unused"}}), {KEY: OPEN})
    runtime.set_phase("ready")  # with an empty model table: a valid body is a 404 for its model
    app = create_app(runtime, _never_loaded, on_fatal=lambda reason: None)
    # raise_server_exceptions: an unhandled exception fails the property instead of becoming a 500.
    return TestClient(app, raise_server_exceptions=True)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
messages = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "wizard"]),
            "content": st.none()
            | st.text(max_size=5)
            | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=3)}))
            | json_values,
            "name": st.none() | st.text(max_size=3) | json_values,
        },
    ),
    max_size=3,
)
# Per field, values around what it accepts (in range, at the edges, just outside), so that bodies
# often pass some checks and fail others; any JSON at all is mixed in below.
near_values: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["demo", "gpt-x"]) | st.text(max_size=4),
    "prompt": st.one_of(
        st.text(max_size=8),
        st.lists(st.text(max_size=3), max_size=3),
        st.lists(st.integers(-2, 3000), max_size=4),
        st.lists(st.lists(st.integers(-2, 3000), max_size=3), max_size=2),
    ),
    "messages": messages,
    "temperature": st.floats(-0.2, 2.2) | st.sampled_from([0.0, 2.0, float("nan"), float("inf")]),
    "top_p": st.floats(-0.2, 1.2),
    "presence_penalty": st.floats(-2.5, 2.5),
    "frequency_penalty": st.floats(-2.5, 2.5),
    "stop": st.none() | st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=17),
    "seed": st.none() | st.integers(-(2**64), 2**64),
    "logit_bias": st.none()
    | st.dictionaries(st.sampled_from(["5", "x", "-1", "99999"]), st.floats(-200, 200), max_size=2),
    "stream_options": st.none() | st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
}
small_numbers = st.none() | st.integers(-2, 40) | st.floats(-1, 40)


def _mostly(near: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Four times in five a value near the field's range, else any JSON at all."""
    return st.integers(0, 4).flatmap(lambda pick: near if pick else json_values)


def bodies(model: type[BaseModel]) -> st.SearchStrategy[Any]:
    values = {
        name: _mostly(near_values.get(name, small_numbers | st.booleans())) for name in model.model_fields
    }
    required = {name: values[name] for name, field in model.model_fields.items() if field.is_required()}
    optional = {name: strategy for name, strategy in values.items() if name not in required}
    return st.one_of(
        st.fixed_dictionaries(required, optional=optional),
        st.fixed_dictionaries({}, optional=values),
        json_values,
    )


def expected_outcome(model: type[BaseModel], body: Any) -> ValidationError | None:
    try:
        model.model_validate(body)
    except ValidationError as error:
        return error
    return None


@pytest.mark.parametrize("path", list(ENDPOINTS))
@settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_json_body_validates_or_gets_a_400_naming_the_parameter(
    client: TestClient, path: str, data: st.DataObject
) -> None:
    model = ENDPOINTS[path]
    body = data.draw(bodies(model), label="body")
    raw = json.dumps(body)  # NaN and Infinity included: Python clients send them, Starlette parses them
    response = client.post(
        path, content=raw, headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    )
    event(f"answered {response.status_code}")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    invalid = expected_outcome(model, body)
    if invalid is None:
        assert (response.status_code, error["param"]) == (404, "model"), error
        return
    assert response.status_code == 400, error
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert "None" not in error["message"].split(":")[0], error
    if isinstance(body, dict):
        fields_at_fault = {str(e["loc"][0]) for e in invalid.errors()}
        assert error["param"] is not None, error
        assert error["param"].split(".")[0].split("[")[0] in fields_at_fault, (error, fields_at_fault)
    else:
        assert error["param"] is None
        assert "JSON object" in error["message"]


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_a_missing_body_is_a_400_that_says_so(client: TestClient, path: str) -> None:
    response = client.post(path, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "the request body (a JSON object) is required"
