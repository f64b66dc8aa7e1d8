"""The local fleet as inventories/local gives it: two models behind one endpoint, the demo model on
instances 1 and 2 and its int8 copy demo-int8 on instance 3. HAProxy routes each request by the `model`
of its body, answers an unknown model and GET /v1/models itself; then, under constant load of both
models, an upgrade, a scale run and a rollback of the demo model alone, which leave demo-int8's instance
untouched and drop no request of either model."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import openai
import pytest

from fleet_ops.autoscale.signals import read_signals
from harness.fleet import KEY, LocalFleet, running_under
from harness.load import Load
from harness.models import DEMO_INT8_MODEL

pytestmark = pytest.mark.integration

# A key that may use the int8 model only.
INT8_KEY = "int8-only-key-0123456789abcdef"
MODELS = ["demo", "demo-int8"]
DEMO, INT8 = {"1", "2"}, {"3"}
ALL_UP = {"localhost-1": "UP", "localhost-2": "UP", "localhost-3": "UP"}


@pytest.fixture(scope="module")
def fleet(demo_model: Path, tmp_path_factory: pytest.TempPathFactory):
    # The inventory's own models (demo x model_runtime_instances, demo-int8 x 1); the demo_model
    # fixture built the int8 copy beside the demo model.
    fleet = LocalFleet(tmp_path_factory.mktemp("fleet"), demo_model, instances=2)
    fleet.settings["model_runtime_api_keys"] = [KEY, f"{INT8_KEY} models=demo-int8"]
    fleet.first = fleet.run("site.yml")
    fleet.v2 = fleet.model_version("v2")
    fleet.int8_version = json.loads((DEMO_INT8_MODEL / "manifest.json").read_text())["version"]
    yield fleet
    stopped = fleet.stop()
    assert stopped.returncode == 0, stopped.output[-3000:]
    assert running_under(fleet.prefix) == [], "stop.yml left processes running"


def client(fleet: LocalFleet, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fleet.url}/v1", api_key=key, max_retries=0, http_client=fleet.http())


def ask(fleet: LocalFleet, model: str, key: str = KEY) -> openai.APIResponse:
    return client(fleet, key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "What is a License?"}], max_tokens=8, temperature=0
    )


def test_one_endpoint_serves_both_models_each_from_its_own_replicas(fleet: LocalFleet) -> None:
    assert fleet.first.returncode == 0, fleet.first.output[-4000:]
    assert fleet.instance_models == {"1": "demo", "2": "demo", "3": "demo-int8"}
    versions = {"demo": fleet.old_model, "demo-int8": fleet.int8_version}
    for model, replicas in (("demo", DEMO), ("demo-int8", INT8)):
        replies = [ask(fleet, model) for _ in range(4)]
        for reply in replies:
            completion = reply.parse()
            assert completion.model == model
            assert completion.choices[0].finish_reason in ("stop", "length")
            assert (
                completion.system_fingerprint
                == f"model-runtime-{fleet.old_runtime}:{model}@{versions[model]}"
            )
        # Every instance of the model answered some (leastconn over idle replicas), no other did.
        assert fleet.answered_by({r.headers["x-request-id"] for r in replies}) == replicas
    assert fleet.server_states() == ALL_UP


def test_the_load_balancer_lists_the_fleet_and_refuses_what_it_does_not_serve(fleet: LocalFleet) -> None:
    assert [m.id for m in client(fleet).models.list()] == MODELS
    assert [m.id for m in client(fleet, INT8_KEY).models.list()] == ["demo-int8"]
    # A model the fleet does not serve: the runtime's own 404, from HAProxy.
    with pytest.raises(openai.NotFoundError) as unknown:
        ask(fleet, 'nope"</x>')
    assert unknown.value.body == {
        "message": 'The model `nope"</x>` does not exist.',
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    # A served model the key may not use: the same answer, from the model's instance.
    with pytest.raises(openai.NotFoundError) as hidden:
        ask(fleet, "demo", INT8_KEY)
    assert hidden.value.body["code"] == "model_not_found"
    # Without a key the fleet knows, nothing is told: the runtime's 401, whatever the model.
    for model in ("demo", "nope"):
        with pytest.raises(openai.AuthenticationError):
            ask(fleet, model, "not-a-key")
    with pytest.raises(openai.AuthenticationError):
        client(fleet, "not-a-key").models.list()


def test_the_autoscaler_reads_each_model_s_own_instances(fleet: LocalFleet) -> None:
    """In a fleet of several models the autoscaler scales one (control_node_autoscaler_model): its
    readings, from the fleet's Prometheus, are of that model's instances only."""

    def replicas() -> dict[str, int]:
        return {model: read_signals(fleet.prometheus, 30, None, model).replicas for model in MODELS}

    deadline = time.monotonic() + 60  # Prometheus scrapes every 2 s
    while replicas() != {"demo": 2, "demo-int8": 1} and time.monotonic() < deadline:
        time.sleep(1)
    assert replicas() == {"demo": 2, "demo-int8": 1}
    assert read_signals(fleet.prometheus, 30).replicas == 3


def untouched(loads: dict[str, Load]) -> None:
    for model, load in loads.items():
        assert load.outcomes, model
        assert load.failures == [], (model, load.failures[:3])


def test_rolling_demo_int8_s_only_replica_is_refused_before_any_change(fleet: LocalFleet) -> None:
    """An upgrade of every model would take demo-int8's one instance out: an outage, refused by the
    plan before anything is installed or drained."""
    before = fleet.record()
    run = fleet.run("upgrade.yml", {"model_runtime_version": fleet.new_runtime})
    assert run.returncode != 0
    said = re.sub(r"\s+", " ", run.output)  # the YAML results fold long lines
    assert (
        "the batch plan 1 is refused, nothing was changed: model demo-int8: batch 1 (localhost) would leave "
        "0 of its 1 serving instances up, under fleet_min_serving 1"
    ) in said, run.output[-3000:]
    assert "PLAY [Roll the release through the GPU servers]" not in run.output
    assert fleet.record() == before


def test_upgrading_one_model_drops_no_request_of_either_and_leaves_the_other_alone(fleet: LocalFleet) -> None:
    before = fleet.replica_pids()["localhost-3"]
    upgrade = {
        "model": "demo",
        "model_artifacts_source": str(fleet.v2),
        "model_runtime_version": fleet.new_runtime,
    }
    run, loads = fleet.run_under_loads("upgrade.yml", upgrade, MODELS)
    assert run.returncode == 0, run.output[-5000:]
    untouched(loads)
    assert fleet.releases() == {
        "1": (fleet.new_runtime, "v2", "serving"),
        "2": (fleet.new_runtime, "v2", "serving"),
        "3": (fleet.old_runtime, fleet.int8_version, "serving"),
    }
    assert fleet.replica_pids()["localhost-3"] == before
    assert {o.fingerprint for o in loads["demo-int8"].outcomes} == {
        f"model-runtime-{fleet.old_runtime}:demo-int8@{fleet.int8_version}"
    }
    assert f"model-runtime-{fleet.new_runtime}:demo@v2" in {o.fingerprint for o in loads["demo"].outcomes}


def test_a_scale_run_must_name_the_model_and_changes_nothing_else(fleet: LocalFleet) -> None:
    refused = fleet.run("scale.yml", {"replicas": 1})
    assert refused.returncode != 0
    assert "the fleet serves demo, demo-int8: say which to scale, -e model=NAME" in refused.output
    assert {state for *_, state in fleet.releases().values()} == {"serving"}


def test_scaling_one_model_drops_no_request_of_either(fleet: LocalFleet) -> None:
    before = fleet.replica_pids()["localhost-3"]
    down, loads = fleet.run_under_loads("scale.yml", {"model": "demo", "replicas": 1}, MODELS)
    assert down.returncode == 0, down.output[-5000:]
    untouched(loads)
    assert [state for *_, state in fleet.releases().values()] == ["serving", "scaled-in", "serving"]
    states = fleet.server_states()
    assert (states["localhost-1"], states["localhost-3"]) == ("UP", "UP")
    assert states["localhost-2"] != "UP"  # drained, stopped
    up, loads = fleet.run_under_loads("scale.yml", {"model": "demo", "replicas": 2}, MODELS)
    assert up.returncode == 0, up.output[-5000:]
    untouched(loads)
    assert fleet.server_states() == ALL_UP
    assert fleet.replica_pids()["localhost-3"] == before


def test_rolling_back_one_model_leaves_the_other_alone(fleet: LocalFleet) -> None:
    before = fleet.replica_pids()["localhost-3"]
    run, loads = fleet.run_under_loads("rollback.yml", {"model": "demo"}, MODELS)
    assert run.returncode == 0, run.output[-5000:]
    untouched(loads)
    assert fleet.releases() == {
        "1": (fleet.old_runtime, fleet.old_model, "serving"),
        "2": (fleet.old_runtime, fleet.old_model, "serving"),
        "3": (fleet.old_runtime, fleet.int8_version, "serving"),
    }
    assert fleet.replica_pids()["localhost-3"] == before
    # The last run that changed demo: the upgrade above (the scale runs changed no release).
    said = re.sub(r"\s+", " ", run.output)  # the YAML results fold long lines
    assert re.search(r"undoing run upgrade-\S+ on localhost: instances 2, 1\b", said), run.output[-3000:]
    # Each instance is what the inventory wants for its own model.
    assert "0 of 3 instances differ" in run.output
