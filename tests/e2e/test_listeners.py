"""The two listeners of a real server: the public one serves the API and health and nothing else (not
metrics, admin or the OpenAPI document, however the path is spelled), the internal one serves those;
the key is checked before the body is read; readiness says why in fixed words, never an exception's."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from harness.server import API_KEY, RuntimeProcess
from model_runtime.access import OPEN
from model_runtime.config import Settings
from model_runtime.server.app import create_app
from model_runtime.server.state import RuntimeState, ServedModel

pytestmark = pytest.mark.e2e

ADMIN_KEY = "admin-key-for-listeners"
MALFORMED = b'{"model": "demo", "prompt": '
INTERNAL_ONLY = [
    "/metrics",
    "/openapi.json",
    "/admin/models",
    # Escapes, as a client could send them: the runtime decodes them before routing.
    "/%6Detrics",
    "/%61dmin/models",
    "/%6fpenapi.json",
]


@pytest.fixture(scope="module")
def server(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    workdir = tmp_path_factory.mktemp("listeners")
    keys = workdir / "admin-keys"
    keys.write_text(ADMIN_KEY + "\n")
    process = RuntimeProcess(demo_model, workdir, {"server": {"admin_keys_file": str(keys)}}, name="demo")
    yield process.start()
    assert process.stop() == 0


@pytest.mark.parametrize("path", INTERNAL_ONLY)
def test_the_public_listener_serves_no_metrics_admin_or_document(server: RuntimeProcess, path: str) -> None:
    for key in (API_KEY, ADMIN_KEY):
        response = httpx.get(f"{server.base_url}{path}", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]["code"] == "not_found"


def test_the_internal_listener_serves_them_and_not_the_api(server: RuntimeProcess) -> None:
    internal = server.internal_url
    assert "model_runtime_info" in httpx.get(f"{internal}/metrics").text
    assert httpx.get(f"{internal}/%6Detrics").status_code == 200  # the same path, decoded
    document = httpx.get(f"{internal}/openapi.json").json()
    assert "/v1/completions" in document["paths"]
    assert "/metrics" not in document["paths"]  # the document describes the public listener
    admin = httpx.get(f"{internal}/admin/models", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert admin.json()["demo"]["max_context"] == 512
    assert httpx.get(f"{internal}/admin/models").status_code == 401
    assert httpx.get(f"{internal}/health/ready").status_code == 200
    with server.http() as client:  # the API key does not open the API here
        assert client.get(f"{internal}/v1/models").status_code == 404
        assert client.get("/v1/models").status_code == 200


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_the_key_is_checked_before_the_body_is_read(server: RuntimeProcess, path: str) -> None:
    headers = {"content-type": "application/json"}
    without_key = httpx.post(f"{server.base_url}{path}", content=MALFORMED, headers=headers)
    assert without_key.status_code == 401, without_key.text
    assert without_key.json()["error"]["code"] == "missing_api_key"
    wrong_key = httpx.post(
        f"{server.base_url}{path}", content=MALFORMED, headers={**headers, "Authorization": "Bearer nope"}
    )
    assert wrong_key.status_code == 401
    with server.http() as client:
        with_key = client.post(path, content=MALFORMED, headers=headers)
    assert with_key.status_code == 400
    assert with_key.json()["error"]["code"] == "invalid_json"


def test_the_admin_key_is_checked_before_the_body_is_read(server: RuntimeProcess) -> None:
    swap = f"{server.internal_url}/admin/models/demo/swap"
    headers = {"content-type": "application/json"}
    assert httpx.post(swap, content=b'{"path": ', headers=headers).status_code == 401
    authorized = {**headers, "Authorization": f"Bearer {ADMIN_KEY}"}
    assert httpx.post(swap, content=b'{"path": ', headers=authorized).status_code == 400


def test_readiness_carries_no_exception_text() -> None:
    """A model that fails to load: readiness says "failed" in fixed words; the reason (which may name
    paths, hosts or worse) is in the log only. In process: the real app, with a loader that fails."""
    secret = "s3://private-bucket/models/demo/weights.safetensors: AccessDenied"

    def failing_loader(_model: object) -> ServedModel:
        raise RuntimeError(secret)

    runtime = RuntimeState(Settings.model_validate({"model": {"path": "unused"}}), {API_KEY: OPEN})
    fatal: list[str] = []
    with TestClient(create_app(runtime, failing_loader, on_fatal=fatal.append)) as client:
        deadline = time.monotonic() + 30
        while not fatal:  # the load runs in the background, as in a server
            assert time.monotonic() < deadline, "the loader never ran"
            time.sleep(0.01)
        ready = client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json() == {"status": "failed", "models": {}, "detail": "the model failed to load"}
    assert secret in fatal[0]  # on its way to the log and the exit, not to clients
