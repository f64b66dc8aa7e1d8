"""What the load balancer of the cloud fleet lets through, against a real runtime: the listener and its
rules as the Pulumi program registers them (under mocks), then every path the rules forward sent, as
it was written, to a `model-runtime serve` process on loopback.

AWS documents that path patterns are case-sensitive globs over the path (not the query string); it
does not say whether the ALB percent-decodes the path, resolves `..` or merges slashes before it
matches. So a path counts as forwarded when any of those readings matches a rule, and the runtime
must then answer it with the API, readiness or its 404, never with metrics, the OpenAPI document or
admin. A path no rule matches gets the listener's own 404, which must be the runtime's.
"""

from __future__ import annotations

import http.client
import json
import posixpath
import re
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from harness.server import API_KEY, RuntimeProcess
from tests.support.pulumi_mocks import ProgramRun, run_program

# pulumi_aws warns, as it loads, about resource types this program does not use.
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws")]

HOSTILE = [
    "/metrics",
    "/openapi.json",
    "/docs",
    "/admin/models",
    "/V1/../metrics",
    "//metrics",
    "/%6Detrics",
    "/v1/../metrics",
    "/v1/./../openapi.json",
    "/v1//../metrics",
    "/v1/%2e%2e/metrics",
    "/v1/%2E%2E/admin/models",
    "/v1/..%2Fmetrics",
    "/v1/%252e%252e/metrics",
    "/v1/models/../../metrics",
    "/health/ready/../../metrics",
    "/health/ready/%2e%2e/%2e%2e/openapi.json",
]


class Alb:
    """The serving listener of a stack: its default action and its forwarding rules' path patterns."""

    def __init__(self, run: ProgramRun, port: int) -> None:
        listener = next(r for r in run.of_type("aws:lb/listener:Listener") if r.inputs["port"] == port)
        (default,) = listener.inputs["defaultActions"]
        self.forwards_by_default = default["type"] == "forward"
        fixed = default.get("fixedResponse", {})
        self.default_status = int(fixed.get("statusCode", 0))
        self.default_body = json.loads(fixed.get("messageBody", "null"))
        self.patterns = [
            pattern
            for rule in run.of_type("aws:lb/listenerRule:ListenerRule")
            if rule.inputs["listenerArn"] == listener.state["arn"]
            and [a["type"] for a in rule.inputs["actions"]] == ["forward"]
            for condition in rule.inputs["conditions"]
            for pattern in condition["pathPattern"]["values"]
        ]

    @staticmethod
    def readings(path: str) -> set[str]:
        """The path as sent, and as an ALB that normalises might compare it."""
        decoded = unquote(path)
        return {path, decoded} | {posixpath.normpath(re.sub("/+", "/", p)) for p in (path, decoded)}

    def forwards(self, path: str) -> bool:
        return self.forwards_by_default or any(
            fnmatchcase(reading, p) for reading in self.readings(path) for p in self.patterns
        )


def get(server: RuntimeProcess, path: str) -> tuple[int, Any]:
    """GET the path exactly as written (http.client sends it untouched; httpx would normalise it)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {API_KEY}"})
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    is_json = response.getheader("content-type", "").startswith("application/json")
    return response.status, json.loads(body) if is_json else body.decode(errors="replace")


@pytest.fixture(scope="module")
def server(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    process = RuntimeProcess(demo_model, tmp_path_factory.mktemp("alb-paths"), name="demo").start()
    yield process
    process.stop()


@pytest.fixture(scope="module", params=[("dev", 80), ("prod", 443)], ids=["dev-http", "prod-https"])
def alb(request: pytest.FixtureRequest) -> Alb:
    stack, port = request.param
    return Alb(run_program(stack), port)


def through(alb: Alb, server: RuntimeProcess, path: str) -> tuple[int, Any]:
    return get(server, path) if alb.forwards(path) else (alb.default_status, alb.default_body)


def test_the_api_and_readiness_are_forwarded(alb: Alb, server: RuntimeProcess) -> None:
    status, body = through(alb, server, "/v1/models")
    assert status == 200
    assert [m["id"] for m in body["data"]] == ["demo"]
    assert through(alb, server, "/health/ready")[0] == 200


@pytest.mark.parametrize("path", HOSTILE)
def test_nothing_else_reaches_past_the_load_balancer(alb: Alb, server: RuntimeProcess, path: str) -> None:
    assert through(alb, server, path) == (404, alb.default_body)


def test_the_load_balancers_404_is_the_runtimes_own(alb: Alb, server: RuntimeProcess) -> None:
    assert alb.default_status == 404
    assert get(server, "/v1/nowhere") == (404, alb.default_body)
