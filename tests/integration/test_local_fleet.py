"""The embedded default, for real: site.yml on inventories/local (this machine, supervisord, HAProxy),
the openai client through the load balancer, an idempotent second run, and stop.yml."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.ansible import ensure_wheelhouse, playbook
from tests.support.models import REPO
from tests.support.server import free_port

pytestmark = pytest.mark.integration

LOCAL = REPO / "inventories" / "local"


def consecutive_free_ports(count: int) -> int:
    while True:
        base = free_port()
        if base + count < 65535 and all(_is_free(base + i) for i in range(1, count)):
            return base


def _is_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def running_under(prefix: Path) -> list[str]:
    listing = subprocess.run(
        ["ps", "-eo", "pid,stat,args"], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in listing.splitlines() if str(prefix) in line and " Z" not in line]


@pytest.fixture(scope="module")
def fleet(demo_model: Path, tmp_path_factory: pytest.TempPathFactory):
    ensure_wheelhouse()
    prefix = tmp_path_factory.mktemp("fleet")
    key = "local-fleet-test-key"
    settings = {
        "fleet_prefix": str(prefix),
        "model_runtime_base_port": consecutive_free_ports(2),
        "loadbalancer_port": free_port(),
        "loadbalancer_stats_port": free_port(),
        "model_runtime_api_keys": [key],
    }
    first = playbook("site.yml", LOCAL, settings)
    yield {"first": first, "settings": settings, "key": key, "prefix": prefix}
    stopped = playbook("stop.yml", LOCAL, settings)
    assert stopped.returncode == 0, stopped.output[-3000:]
    assert running_under(prefix) == [], "stop.yml left processes running"


def test_site_brings_up_the_fleet_behind_haproxy(fleet: dict) -> None:
    first = fleet["first"]
    assert first.returncode == 0, first.output[-4000:]
    port = fleet["settings"]["loadbalancer_port"]
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=fleet["key"], max_retries=0)
    answers = set()
    for _ in range(4):
        reply = client.chat.completions.with_raw_response.create(
            model="demo", messages=[{"role": "user", "content": "What is a License?"}], max_tokens=12
        )
        completion = reply.parse()
        assert completion.choices[0].message.content.strip()
        assert reply.headers["x-request-id"]  # set by HAProxy, echoed by the runtime
        answers.add(completion.system_fingerprint)
    assert len(answers) == 1
    assert next(iter(answers)).endswith(f"demo@{_model_version()}")
    # Both instances are in the pool and up.
    stats = httpx.get(f"http://127.0.0.1:{fleet['settings']['loadbalancer_stats_port']}/stats;csv").text
    rows = [line.split(",") for line in stats.splitlines() if line.startswith("model_runtime,localhost-")]
    assert len(rows) == 2
    assert all(row[17] == "UP" for row in rows)


def test_the_runtime_is_not_reachable_through_haproxy_for_admin_paths(fleet: dict) -> None:
    port = fleet["settings"]["loadbalancer_port"]
    assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 404
    assert httpx.post(f"http://127.0.0.1:{port}/admin/swap").status_code == 404


def test_second_run_changes_nothing(fleet: dict) -> None:
    again = playbook("site.yml", LOCAL, fleet["settings"])
    assert again.returncode == 0, again.output[-4000:]
    assert again.changed() == 0, [line for line in again.output.splitlines() if line.startswith("changed")]


def _model_version() -> str:
    import json

    return json.loads((REPO / ".cache" / "demo-model" / "manifest.json").read_text())["version"]
