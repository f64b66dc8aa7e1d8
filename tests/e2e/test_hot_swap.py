"""Hot swap under constant load: to a new version with zero failed requests, to a broken version
with the old one still serving (zero failed requests), and by SIGHUP after a config change; then by
drained restart (server.hot_swap: restart, what auto does where two copies cannot fit): out of the
pool meanwhile, the request in flight finished, the new version serving, or the old one again."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from harness.load import Load, completions
from harness.server import API_KEY, RuntimeProcess

pytestmark = pytest.mark.e2e

ADMIN_KEY = "admin-key-for-swaps"


@pytest.fixture
def versions(demo_model: Path, tmp_path: Path) -> dict[str, Path]:
    made = {}
    for name in ("v2", "v3"):
        made[name] = tmp_path / name
        shutil.copytree(demo_model, made[name])
    broken = tmp_path / "broken"
    shutil.copytree(demo_model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a cut-off download
    made["broken"] = broken
    return made


def swapping_server(demo_model: Path, tmp_path: Path, hot_swap: str) -> RuntimeProcess:
    keys = tmp_path / "admin-keys"
    keys.write_text(ADMIN_KEY + "\n")
    return RuntimeProcess(
        demo_model,
        tmp_path,
        {"model": {"version": "v1"}, "server": {"admin_keys_file": str(keys), "hot_swap": hot_swap}},
        name="demo",
    ).start()


@pytest.fixture
def server(demo_model: Path, tmp_path: Path):
    process = swapping_server(demo_model, tmp_path, "auto")  # the demo model on CPU: beside
    yield process
    assert process.stop() == 0


@pytest.fixture
def restarting(demo_model: Path, tmp_path: Path):
    process = swapping_server(demo_model, tmp_path, "restart")
    yield process
    assert process.stop() == 0


def swap(server: RuntimeProcess, body: dict, key: str = ADMIN_KEY) -> httpx.Response:
    return httpx.post(
        f"{server.internal_url}/admin/models/demo/swap",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=300,
    )


def served_version(server: RuntimeProcess) -> str:
    return server.client().models.list().data[0].model_extra["version"]


def test_swap_under_load_drops_nothing(server: RuntimeProcess, versions: dict[str, Path]) -> None:
    with Load(server.base_url, completions("demo"), api_key=API_KEY) as load:
        load.wait_for(20)
        response = swap(server, {"path": str(versions["v2"]), "version": "v2"})
        swapped_at = time.monotonic()
        assert response.status_code == 200, response.text
        assert response.json()["version"] == "v2"
        assert response.json()["previous"] == "v1"
        load.wait_for(len(load.outcomes) + 30)
    assert load.failures == [], load.failures[:3]
    fingerprints = {o.fingerprint.rsplit("@", 1)[-1] for o in load.outcomes}
    assert fingerprints == {"v1", "v2"}
    after = [o for o in load.outcomes if o.started > swapped_at + 0.1]
    assert after
    assert all(o.fingerprint.endswith("@v2") for o in after)
    assert served_version(server) == "v2"


def test_swap_to_a_broken_version_keeps_the_old_one_serving(
    server: RuntimeProcess, versions: dict[str, Path]
) -> None:
    with Load(server.base_url, completions("demo"), api_key=API_KEY) as load:
        load.wait_for(20)
        response = swap(server, {"path": str(versions["broken"]), "version": "broken"})
        load.wait_for(len(load.outcomes) + 20)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "load_failed"
    assert "demo@v1 keeps serving" in error["message"]
    assert load.failures == [], load.failures[:3]
    assert {o.fingerprint.rsplit("@", 1)[-1] for o in load.outcomes} == {"v1"}
    assert served_version(server) == "v1"
    assert httpx.get(f"{server.base_url}/health/ready").status_code == 200


def test_admin_endpoints_take_only_admin_keys(server: RuntimeProcess, versions: dict[str, Path]) -> None:
    assert swap(server, {"path": str(versions["v2"])}, key=API_KEY).status_code == 401
    assert httpx.post(f"{server.internal_url}/admin/models/demo/swap", json={"path": "x"}).status_code == 401


def test_admin_endpoints_do_not_exist_without_admin_keys(demo_server: RuntimeProcess) -> None:
    response = httpx.post(
        f"{demo_server.internal_url}/admin/models/demo/swap", json={"path": "x"},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )  # fmt: skip
    assert response.status_code == 404


def test_sighup_after_a_config_change_swaps(server: RuntimeProcess, versions: dict[str, Path]) -> None:
    config = yaml.safe_load(server.config_file.read_text())
    config["model"].update(path=str(versions["v3"]), version="v3")
    server.config_file.write_text(yaml.safe_dump(config))
    with Load(server.base_url, completions("demo"), api_key=API_KEY) as load:
        load.wait_for(10)
        server.signal(signal.SIGHUP)
        deadline = time.monotonic() + 120
        while served_version(server) != "v3":
            assert time.monotonic() < deadline, server.log()[-2000:]
            time.sleep(0.2)
        load.wait_for(len(load.outcomes) + 20)
    assert load.failures == [], load.failures[:3]
    assert json.loads(httpx.get(f"{server.base_url}/health/ready").text)["models"] == {"demo": "v3"}


def swap_watching_readiness(server: RuntimeProcess, body: dict) -> tuple[httpx.Response, set[str]]:
    """Swap while one long stream is in flight; returns the swap's answer and every readiness seen
    meanwhile. The stream must end whole, on the old version."""
    stream: list[str] = []

    def long_stream() -> None:
        chunks = server.client().completions.create(
            model="demo", prompt="This License", max_tokens=400, stream=True, extra_body={"ignore_eos": True}
        )
        stream.extend(chunk.system_fingerprint or "" for chunk in chunks)

    streaming = threading.Thread(target=long_stream)
    streaming.start()
    time.sleep(0.3)  # the stream has begun
    answer: list[httpx.Response] = []
    swapping = threading.Thread(target=lambda: answer.append(swap(server, body)))
    swapping.start()
    seen = set()
    while swapping.is_alive():
        seen.add(httpx.get(f"{server.base_url}/health/ready").json()["status"])
        time.sleep(0.05)
    streaming.join()
    assert stream
    assert all(f.endswith("@v1") for f in stream if f), stream[-3:]
    return answer[0], seen


def test_a_drained_restart_finishes_the_stream_then_serves_the_new_version(
    restarting: RuntimeProcess, versions: dict[str, Path]
) -> None:
    response, seen = swap_watching_readiness(restarting, {"path": str(versions["v2"]), "version": "v2"})
    assert response.status_code == 200, response.text
    assert "swapping" in seen  # out of its load balancer's pool meanwhile
    assert served_version(restarting) == "v2"
    assert httpx.get(f"{restarting.base_url}/health/ready").status_code == 200
    assert "swap by drained restart" in restarting.log()


def test_a_drained_restart_to_a_broken_version_starts_the_old_one_again(
    restarting: RuntimeProcess, versions: dict[str, Path]
) -> None:
    response, seen = swap_watching_readiness(
        restarting, {"path": str(versions["broken"]), "version": "broken"}
    )
    assert response.status_code == 422
    assert "demo@v1 serves again" in response.json()["error"]["message"]
    assert "swapping" in seen
    assert served_version(restarting) == "v1"
    assert httpx.get(f"{restarting.base_url}/health/ready").status_code == 200
