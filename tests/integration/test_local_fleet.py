"""The embedded default, for real: site.yml on inventories/local (this machine, supervisord, HAProxy,
Prometheus watching it all) with the inventory's two models behind one endpoint, the demo model on
instances 1 and 2 and its int8 copy demo-int8 on instance 3. HAProxy routes each request by the `model`
of its body and answers an unknown model and GET /v1/models itself; an idempotent second run,
Prometheus's targets and the dashboard's queries. Then, under constant load through HAProxy with every
request counted, runs of the demo model alone, each leaving demo-int8's instance untouched: a rolling
upgrade of runtime, model and engine, a rollback, a broken release, a kill -9, a stalled engine, a soak,
a scheduled scale run down to one replica, the autoscaler out to two and back, and a burst to a
stand-in cloud behind HAProxy and back; stop.yml at the end. (One fleet serves both models: each fleet
brought up costs minutes, see docs/testing.md.)"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from callback_plugins.fleet_lock import LOCK_HELD, LOCK_NAME, FleetLock, holder_of
from fleet_ops.autoscale.signals import read_signals
from fleet_ops.cloud_scale import describe_group
from fleet_ops.cycle import STEPS, parse_cycles
from harness import REPO
from harness.dashboard import dashboard_queries
from harness.fleet import KEY, LOAD_PAUSE_S, LOCAL, LocalFleet, running_under
from harness.load import Load
from harness.models import DEMO_INT8_MODEL
from harness.playbooks import role_defaults
from harness.server import engine_pid
from harness.soak import OVERLOAD_SETTINGS, report, soak
from harness.vllm_env import vllm_engine_settings
from module_utils.haproxy_runtime import RuntimeAPI
from tests.support.cloud_standin import CloudStandIn, make_group
from tests.support.s3 import s3_server

pytestmark = pytest.mark.integration

# Keys with per-minute limits (the fleet's HAProxy counts them), and a key that may use the int8 model only.
QUOTA_KEY = "quota-key-0123456789abcdef"
TOKENS_KEY = "tokens-key-0123456789abcdef"
INT8_KEY = "int8-only-key-0123456789abcdef"
MODELS = ["demo", "demo-int8"]
# The demo model's two replicas: the schedule scales 2 -> 1, the autoscaler 1 -> 2 -> 1, a release that
# fails on the first leaves the other untouched. (Each replica more costs every roll below a model load
# under vLLM.) demo-int8 has one, instance 3 (the inventory's models).
REPLICAS = 2
INSTANCES = [str(i) for i in range(1, REPLICAS + 1)]
SERVERS = [f"localhost-{i}" for i in INSTANCES]
INT8 = "3"
INT8_SERVER = f"localhost-{INT8}"
ALL_UP = dict.fromkeys([*SERVERS, INT8_SERVER], "UP")
SCALED_TO_ONE = ["serving", "scaled-in", "serving"]
SERVICE = role_defaults("model_runtime")["model_runtime_service_name"]  # instance N's program: SERVICE-N
# A stalled engine (test below) is taken out after 5 s and its replica restarted after 10 s.
STALL = {"engine_stall_s": 5, "engine_stall_exit_s": 10}
RUNTIME_SETTINGS = {
    **OVERLOAD_SETTINGS,
    "scheduler": {**OVERLOAD_SETTINGS["scheduler"], **STALL},
    "vllm": vllm_engine_settings(),  # for the upgrade to vLLM below (the role gives vLLM its interpreter)
}


@pytest.fixture(scope="module")
def fleet(demo_model: Path, vllm_python: Path, tmp_path_factory: pytest.TempPathFactory):
    # Few batch slots and queue places per replica, so that the short soak below is an overload.
    fleet = LocalFleet(
        tmp_path_factory.mktemp("fleet"),
        demo_model,
        instances=REPLICAS,
        runtime_settings=RUNTIME_SETTINGS,
    )  # the inventory's own models: demo x REPLICAS, demo-int8 x 1 (built beside the demo model)
    # The vLLM build this machine has (its CPU build, its own environment): the upgrade rolls to it.
    fleet.settings["model_runtime_vllm_python"] = str(vllm_python)
    # The operator's PYTHONPATH leads to a uvicorn that cannot be imported: the instances (and the role's
    # compile of what they import) must not see it, though supervisord starts from this very run.
    decoy = tmp_path_factory.mktemp("operator-pythonpath")
    (decoy / "uvicorn").mkdir()
    (decoy / "uvicorn" / "__init__.py").write_text(
        'raise ImportError("the caller\'s PYTHONPATH reached the fleet")\n'
    )
    # The cloud behind the load balancer (the burst test below): HAProxy knows its endpoint from the
    # start, and finds it down (nothing there) until the group wants an instance.
    fleet.cloud = CloudStandIn(
        CLOUD_GROUP, demo_model, tmp_path_factory.mktemp("cloud"), KEY, {"scheduler": CLOUD_SCHEDULER}
    )
    fleet.settings.update({
        "loadbalancer_burst_servers": [
            {"name": "cloud", "address": "127.0.0.1", "port": fleet.cloud.port, "host": "localhost"}
        ],
        "loadbalancer_burst_ca_file": str(fleet.cloud.pki / "ca.pem"),
        "loadbalancer_burst_after_connections": OVERLOAD_SETTINGS["scheduler"]["max_batch_size"],
    })  # fmt: skip
    # Keys with limits beside the demo key, in both forms an inventory may give them.
    fleet.settings["model_runtime_api_keys"] = [
        KEY,
        {"key": QUOTA_KEY, "requests_per_minute": 3, "priority": "batch"},
        f"{TOKENS_KEY} tokens_per_minute=160",
        f"{INT8_KEY} models=demo-int8",
    ]
    # The scheduled runs read an encrypted vault (the cron test below): its password file, root's alone.
    fleet.vault_password = tmp_path_factory.mktemp("vault") / "password"
    fleet.vault_password.touch(mode=0o600)
    fleet.vault_password.write_text(secrets.token_hex(16) + "\n")
    fleet.settings["control_node_vault_password_file"] = str(fleet.vault_password)
    fleet.first = fleet.run("site.yml", env={"PYTHONPATH": str(decoy)})
    fleet.v2 = fleet.model_version("v2")
    fleet.broken = fleet.model_version("broken", break_weights=True)
    fleet.int8_version = json.loads((DEMO_INT8_MODEL / "manifest.json").read_text())["version"]
    yield fleet
    stopped = fleet.stop()
    assert stopped.returncode == 0, stopped.output[-3000:]
    assert running_under(fleet.prefix) == [], "stop.yml left processes running"


def client(fleet: LocalFleet, key: str = KEY) -> openai.OpenAI:
    """The openai client through HAProxy, over HTTPS, trusting the fleet's own CA (made by the
    loadbalancer role for the local demo)."""
    return openai.OpenAI(base_url=f"{fleet.url}/v1", api_key=key, max_retries=0, http_client=fleet.http())


def ask(fleet: LocalFleet, model: str, key: str = KEY) -> openai.APIResponse:
    messages = [{"role": "user", "content": "What is a License?"}]
    return client(fleet, key).chat.completions.with_raw_response.create(
        model=model, messages=messages, max_tokens=12, temperature=0
    )


def test_site_brings_up_one_endpoint_serving_both_models_each_from_its_replicas(fleet: LocalFleet) -> None:
    first = fleet.first
    assert first.returncode == 0, first.output[-4000:]
    assert fleet.instance_models == {"1": "demo", "2": "demo", INT8: "demo-int8"}
    versions = {"demo": fleet.old_model, "demo-int8": fleet.int8_version}
    for model, replicas in (("demo", set(INSTANCES)), ("demo-int8", {INT8})):
        replies = [ask(fleet, model) for _ in range(4)]
        for reply in replies:
            completion = reply.parse()
            assert completion.model == model
            assert completion.choices[0].message.content.strip()
            assert reply.headers["x-request-id"]  # set by HAProxy, echoed by the runtime
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


def within_one_minute_window(margin_s: float = 20) -> None:
    """Tokens are counted over the clock's minute: start a check with margin_s of the minute still left."""
    into = time.time() % 60
    if into > 60 - margin_s:
        time.sleep(60 - into + 0.5)


def test_per_key_limits_hold_across_replicas_with_the_openai_headers_and_no_key_in_sight(
    fleet: LocalFleet,
) -> None:
    def complete(key: str, max_tokens: int = 4) -> openai.APIResponse:
        return client(fleet, key).completions.with_raw_response.create(
            model="demo", prompt="This License", max_tokens=max_tokens, temperature=0
        )

    within_one_minute_window()
    # Requests: 3 a minute, counted at HAProxy whichever replica serves them.
    served = [complete(QUOTA_KEY) for _ in range(3)]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in served] == ["2", "1", "0"]
    assert fleet.answered_by({r.headers["x-request-id"] for r in served}) == set(INSTANCES)
    with pytest.raises(openai.RateLimitError) as refused:
        complete(QUOTA_KEY)
    assert refused.value.body["code"] == "rate_limit_exceeded"
    assert refused.value.body["type"] == "requests"
    headers = refused.value.response.headers
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert int(headers["retry-after"]) >= 1
    assert complete(KEY).parse().choices[0].text is not None  # another key is served meanwhile
    # Tokens: 160 a minute; each of these costs 100 (max_tokens) plus its body's bytes / 4.
    first = complete(TOKENS_KEY, max_tokens=100)
    left = int(first.headers["x-ratelimit-remaining-tokens"])
    assert 0 < left < 60
    with pytest.raises(openai.RateLimitError) as refused:
        complete(TOKENS_KEY, max_tokens=100)
    assert refused.value.body["type"] == "tokens"
    assert refused.value.response.headers["x-ratelimit-remaining-tokens"] == str(left)
    assert complete(TOKENS_KEY, max_tokens=8).headers["x-ratelimit-remaining-tokens"]  # what fits passes
    # HAProxy knows the keys by their SHA-256 only: not in its counters, its log, or the run's output.
    api = RuntimeAPI(str(fleet.prefix / "run/haproxy/admin.sock"), "quotas")
    table = api.ask("show table quotas")
    assert hashlib.sha256(QUOTA_KEY.encode()).hexdigest() in table
    haproxy_log = (fleet.prefix / "var/log/model-runtime/haproxy.log").read_text()
    for key in (KEY, QUOTA_KEY, TOKENS_KEY):
        assert key not in table
        assert key not in haproxy_log
        assert key not in fleet.first.output


def test_admin_and_metrics_are_not_reachable_through_haproxy(fleet: LocalFleet) -> None:
    with fleet.http() as client:
        assert client.get("/metrics").status_code == 404
        assert client.post("/admin/models/demo/swap").status_code == 404


def test_the_load_balancer_speaks_only_verified_tls(fleet: LocalFleet) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{fleet.url}/health/ready")  # the system's CAs do not know the fleet's CA
    plain = f"http://127.0.0.1:{fleet.settings['loadbalancer_port']}/health/ready"
    with pytest.raises(httpx.HTTPError):
        httpx.get(plain).raise_for_status()


def test_second_run_changes_nothing(fleet: LocalFleet) -> None:
    again = fleet.run("site.yml")
    assert again.returncode == 0, again.output[-4000:]
    assert again.changed() == 0, [line for line in again.output.splitlines() if line.startswith("changed")]


def settle(check: Callable[[], object], timeout_s: float = 60) -> object:
    """check()'s result once it is truthy, or its last one when timeout_s ran out: for what Prometheus
    sees, which follows the fleet by a scrape (2 s here) or a rule evaluation."""
    deadline = time.monotonic() + timeout_s
    while not (result := check()) and time.monotonic() < deadline:
        time.sleep(1)
    return result


def scraped_instances(fleet: LocalFleet, demo_replicas: int) -> set[str]:
    """What Prometheus should scrape with the demo model at demo_replicas: those, and demo-int8's."""
    return {fleet.metrics_address(i) for i in [*range(1, demo_replicas + 1), int(INT8)]}


def test_prometheus_scrapes_every_instance_haproxy_and_the_node_exporter(fleet: LocalFleet) -> None:
    """The monitoring role's Prometheus scrapes each instance at its internal listener, HAProxy's
    exporter and the node exporter, from targets the roles wrote out of the inventory."""
    wanted = {
        "model-runtime": scraped_instances(fleet, REPLICAS),  # both models' instances
        "haproxy": {f"127.0.0.1:{fleet.settings['loadbalancer_stats_port']}"},
        "node": {f"127.0.0.1:{fleet.settings['exporters_node_port']}"},
    }

    def unhealthy() -> list[tuple[str, str, str]]:
        targets = fleet.prometheus.targets()
        found = {(t.job, t.address) for t in targets}
        wants = {(job, address) for job, addresses in wanted.items() for address in addresses}
        missing = [(job, address, "not a target") for job, address in sorted(wants - found)]
        return missing + [(t.job, t.address, t.last_error or t.health) for t in targets if t.health != "up"]

    assert settle(lambda: not unhealthy()), unhealthy()
    assert fleet.prometheus.value('count(up{job="model-runtime"} == 1)') == len(ALL_UP)


def test_the_autoscaler_reads_each_model_s_own_instances(fleet: LocalFleet) -> None:
    """In a fleet of several models the autoscaler scales one (control_node_autoscaler_model): its
    readings, from the fleet's Prometheus, are of that model's instances only."""

    def replicas() -> dict[str, int]:
        return {model: read_signals(fleet.prometheus, 30, None, model).replicas for model in MODELS}

    assert settle(lambda: replicas() == {"demo": REPLICAS, "demo-int8": 1}), replicas()
    assert read_signals(fleet.prometheus, 30).replicas == len(ALL_UP)


def test_the_dashboards_queries_return_series_after_a_load(fleet: LocalFleet) -> None:
    """Every query of the Grafana dashboard, as Grafana sends it with every variable at "All", answers
    with series from the real Prometheus once the fleet has served some traffic."""
    with fleet.load(pause_s=0.1) as traffic:
        traffic.wait_for(40)
    assert traffic.failures == []
    # And a few requests the runtime refuses (400), for the panels of errors by status.
    with fleet.http() as client:
        for _ in range(3):
            refused = client.post("/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                                  json={"model": "demo", "prompt": "x", "max_tokens": -1})  # fmt: skip
            assert refused.status_code == 400
    queries = dashboard_queries(all_values=True)

    def empty() -> dict[str, str]:
        return {where: expr for where, expr in queries.items() if not fleet.prometheus.query(expr)}

    assert settle(lambda: not empty()), empty()


def engines(fleet: LocalFleet) -> dict[str, str]:
    return {i: entry["engine"] for i, entry in fleet.record()["instances"].items()}


def no_request_failed(loads: dict[str, Load]) -> None:
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


def test_rolling_upgrade_of_one_model_s_runtime_model_and_engine_drops_nothing_and_leaves_the_other_alone(
    fleet: LocalFleet,
) -> None:
    """A new runtime and model for demo, served by vLLM instead of the torch engine: one release, rolled
    one instance at a time under load of both models (the engine change rides on this roll rather than
    one of its own: each roll over the fleet takes minutes here). demo-int8's instance is not touched."""
    int8_pid = fleet.replica_pids()[INT8_SERVER]
    upgrade = {
        "model": "demo",
        "model_runtime_version": fleet.new_runtime,
        "model_artifacts_source": str(fleet.v2),
        "model_runtime_engine": "vllm",
    }
    run, loads = fleet.run_under_loads("upgrade.yml", upgrade, MODELS)
    assert run.returncode == 0, run.output[-5000:]
    no_request_failed(loads)
    assert fleet.releases() == {
        **{i: (fleet.new_runtime, "v2", "serving") for i in INSTANCES},
        INT8: (fleet.old_runtime, fleet.int8_version, "serving"),
    }
    assert engines(fleet) == {**dict.fromkeys(INSTANCES, "vllm"), INT8: "auto"}
    for i in range(1, REPLICAS + 1):  # vLLM serves: its own metrics beside ours
        assert "vllm:num_requests_running" in fleet.replica_metrics(i)
    assert fleet.replica_pids()[INT8_SERVER] == int8_pid
    assert f"model-runtime-{fleet.new_runtime}:demo@v2" in {o.fingerprint for o in loads["demo"].outcomes}
    assert {o.fingerprint for o in loads["demo-int8"].outcomes} == {
        f"model-runtime-{fleet.old_runtime}:demo-int8@{fleet.int8_version}"
    }
    # The run's -e model_runtime_version is wanted of demo-int8 too, which the run (of demo) left alone.
    assert f"1 of {len(ALL_UP)} instances differ" in run.output
    assert len(re.findall(r"smoke: localhost-\d", run.output)) == 2 * REPLICAS  # two prompts per instance
    cycles = parse_cycles(run.output)
    assert sorted(cycles) == SERVERS
    for steps in cycles.values():
        assert list(steps) == [*STEPS.values(), "total"]
        assert sum(steps.values()) - steps["total"] == pytest.approx(steps["total"], abs=0.05)


def test_status_as_json_marks_only_what_differs_after_the_upgrade(fleet: LocalFleet) -> None:
    # The inventory (with the upgrade's -e) wants what demo's instances now run, and the new runtime of
    # demo-int8's too, which the upgrade of demo left on the old one.
    wanted = {
        "model_runtime_version": fleet.new_runtime,
        "model_artifacts_source": str(fleet.v2),
        "model_runtime_engine": "vllm",
        "json": True,
    }
    run = fleet.run("status.yml", wanted, env={"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"})
    assert run.returncode == 0, run.output[-3000:]
    task = run.output.rindex("TASK [Print the fleet table]")
    result, _ = json.JSONDecoder().raw_decode(run.output, run.output.index("{", task))
    shown = result["msg"]
    assert shown["desired"]["demo"]["runtime_version"] == fleet.new_runtime
    rows = [(row["instance"], row["model_version"], row["differs"]) for row in shown["instances"]]
    assert rows == [*((i, "v2", False) for i in INSTANCES), (INT8, fleet.int8_version, True)]


def test_rollback_after_the_upgrade_drops_nothing_and_leaves_the_other_model_alone(fleet: LocalFleet) -> None:
    """Back to the previous runtime and model, and to the torch engine, which the tests after this use:
    the upgrade's own instances, named by the run id their records carry (demo-int8's names site.yml's)."""
    int8_pid = fleet.replica_pids()[INT8_SERVER]
    runs = {i: entry["run"] for i, entry in fleet.record()["instances"].items()}
    upgrade_run = runs["1"]
    assert upgrade_run.startswith("upgrade-")
    assert runs == {**dict.fromkeys(INSTANCES, upgrade_run), INT8: runs[INT8]}
    assert runs[INT8] != upgrade_run
    run, loads = fleet.run_under_loads("rollback.yml", {"run": upgrade_run}, MODELS)
    assert run.returncode == 0, run.output[-5000:]
    no_request_failed(loads)
    assert fleet.releases() == {
        **{i: (fleet.old_runtime, fleet.old_model, "serving") for i in INSTANCES},
        INT8: (fleet.old_runtime, fleet.int8_version, "serving"),
    }
    assert engines(fleet) == dict.fromkeys([*INSTANCES, INT8], "auto")
    for i in range(1, REPLICAS + 1):
        assert "vllm:" not in fleet.replica_metrics(i)
    assert fleet.replica_pids()[INT8_SERVER] == int8_pid
    said = re.sub(r"\s+", " ", run.output)  # the YAML results fold long lines
    assert f"undoing run {upgrade_run} on localhost: instances 2, 1" in said, run.output[-3000:]
    # Each instance is what the inventory wants for its own model.
    assert f"0 of {len(ALL_UP)} instances differ" in run.output


def process_starts(fleet: LocalFleet, instance: int) -> int:
    """How often the instance's process started, as the runtime itself counts in its state folder (the
    count behind model_runtime_process_starts_total)."""
    return int((fleet.prefix / f"var/lib/model-runtime/instance-{instance}/process-starts").read_text())


def test_a_broken_release_stops_at_the_first_instance_and_drops_nothing(fleet: LocalFleet) -> None:
    """A release whose weights cannot load: supervisord starts it model_runtime_start_retries + 1 times,
    then gives up (FATAL: not restarted forever), the run puts the instance back on the release it ran
    and stops there."""
    before, pids, starts = fleet.releases(), fleet.replica_pids(), process_starts(fleet, 1)
    broken = {"model": "demo", "model_artifacts_source": str(fleet.broken)}
    run, traffic = fleet.run_under_load("upgrade.yml", broken)
    assert run.returncode != 0
    said = re.sub(r"\s+", " ", run.output)  # the YAML results fold long lines
    assert "localhost instance 1 failed at step ready" in said, run.output[-5000:]
    assert re.search(r"the instance stopped for good: \S+-1 +FATAL", run.output), run.output[-5000:]
    assert "the host rolls no further instance" in said
    assert "The run stopped past its failure budget" in said
    retries = role_defaults("model_runtime")["model_runtime_start_retries"]
    assert process_starts(fleet, 1) == starts + retries + 1 + 1  # the broken release's tries, the restore
    assert KEY not in run.output
    assert traffic.failures == [], traffic.failures[:3]
    assert fleet.releases() == before  # instance 1 back where it was
    untouched = {name: pid for name, pid in fleet.replica_pids().items() if name != "localhost-1"}
    assert untouched == {name: pid for name, pid in pids.items() if name != "localhost-1"}
    assert fleet.server_states() == ALL_UP


def test_driver_upgrade_skips_hosts_without_a_gpu(fleet: LocalFleet) -> None:
    before = fleet.releases()
    run = fleet.run("driver-upgrade.yml", {"nvidia_driver_version": "575"})
    assert run.returncode == 0, run.output[-3000:]
    assert run.changed() == 0
    assert "Drain and stop each serving instance" not in run.output
    assert fleet.releases() == before


def test_driver_upgrade_plan_in_check_mode_changes_nothing(fleet: LocalFleet) -> None:
    before = fleet.releases()
    plan = {
        "nvidia_driver_version": "575",
        "nvidia_driver_gpu_override": True,
        "nvidia_driver_keyring_sha256": "0" * 64,
    }
    # One host: its driver change takes every replica out at once, an outage the plan refuses unless
    # the operator accepts it.
    refused = fleet.run("driver-upgrade.yml", plan, "--check")
    assert refused.returncode != 0
    assert (
        f"model demo: batch 1 (localhost) would leave 0 of its {REPLICAS} serving instances up, "
        "under fleet_min_serving 1" in re.sub(r"\s+", " ", refused.output)
    ), refused.output[-3000:]
    assert "TASK [fleet_rollout" not in refused.output
    run = fleet.run("driver-upgrade.yml", {**plan, "fleet_min_serving": 0}, "--check")
    assert run.returncode == 0, run.output[-3000:]
    assert "would install cuda-drivers-575" in run.output
    assert run.output.count("TASK [fleet_rollout : Drain the instance at every load balancer]") == len(ALL_UP)
    assert fleet.releases() == before
    assert fleet.server_states() == ALL_UP


def back_up(fleet: LocalFleet, killed: int) -> bool:
    """Instance 2 runs again as a new process that answers ready, and HAProxy has it UP. (supervisord
    starts the new process at once, before HAProxy has even noticed the old one is gone: the new PID
    and HAProxy's UP alone would hold the moment after the kill.)"""
    pid = fleet.supervisorctl("pid", "model-runtime-2")
    return (
        pid.isdigit()
        and int(pid) not in (0, killed)
        and fleet.replica_ready(2)
        and fleet.server_states().get("localhost-2") == "UP"
    )


def test_kill_9_of_a_replica_costs_no_non_streaming_request(fleet: LocalFleet) -> None:
    pid = int(fleet.supervisorctl("pid", "model-runtime-2"))
    with fleet.load() as traffic:
        traffic.wait_for(20)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 180
        while not back_up(fleet, pid):
            assert time.monotonic() < deadline, "the killed replica did not come back"
            time.sleep(0.5)
        traffic.wait_for(len(traffic.outcomes) + 40)
    assert [o for o in traffic.failures if not o.stream] == []
    assert back_up(fleet, pid), (fleet.supervisorctl("status"), fleet.server_checks())


def test_a_stalled_engine_is_taken_out_and_its_replica_restarted(fleet: LocalFleet) -> None:
    """SIGSTOP on instance 2's engine process: its readiness turns 503 (HAProxy takes it out), its
    requests end with 503 engine_stalled (HAProxy retries the ones not yet streaming elsewhere), the
    process exits non-zero, supervisord starts it again and it rejoins."""
    pid = int(fleet.supervisorctl("pid", "model-runtime-2"))
    engine = engine_pid(pid)
    seen: set[str | None] = set()
    try:
        with fleet.load() as traffic:
            traffic.wait_for(20)
            os.kill(engine, signal.SIGSTOP)
            deadline = time.monotonic() + 180
            while not back_up(fleet, pid):
                assert time.monotonic() < deadline, (seen, fleet.supervisorctl("status"))
                seen.add(fleet.replica_readiness(2))
                time.sleep(0.2)
            traffic.wait_for(len(traffic.outcomes) + 40)
    finally:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(engine, sig)
    assert "stalled" in seen
    assert [o for o in traffic.failures if not o.stream] == []
    assert back_up(fleet, pid), (fleet.supervisorctl("status"), fleet.server_checks())


def test_a_short_soak_above_capacity_answers_or_refuses_every_request(fleet: LocalFleet) -> None:
    clients = 40  # against 2 replicas x (4 batch slots + 4 queue places)
    result = soak(fleet.url, KEY, fleet.tls(), fleet.replica_pids, clients=clients, seconds=20)
    print(report(result, clients))
    assert result.lost == []
    assert result.refused_without_retry_after == 0
    assert result.refused > 0  # it was an overload
    assert result.answered > 0
    assert sorted(result.memory_mb) == sorted(ALL_UP)
    for warm, end in result.memory_mb.values():
        assert end < warm * 1.25 + 64, result.memory_mb


def test_a_scale_run_must_name_the_model_and_changes_nothing(fleet: LocalFleet) -> None:
    refused = fleet.run("scale.yml", {"replicas": 1})
    assert refused.returncode != 0
    assert "the fleet serves demo, demo-int8: say which to scale, -e model=NAME" in refused.output
    assert {state for *_, state in fleet.releases().values()} == {"serving"}


def test_a_scheduled_scale_run_is_a_cron_job_under_the_lock_and_drops_nothing(fleet: LocalFleet) -> None:
    """The evening schedule's cron command, run as cron would: skipped while another run holds the
    fleet's lock; then, under load, 2 replicas down to 1, with the fleet's settings (the API keys among
    them) in a vault only the runner's password file opens. Each outcome reaches Prometheus (the node
    exporter's textfile collector) for the ScheduledRunFailed alert."""
    cron = (fleet.prefix / "etc/cron.d/model-runtime-schedules").read_text()
    jobs = {m.group(1): m.group(2) for m in re.finditer(r"#Ansible: model-runtime (\S+)\n(.+)", cron)}
    assert set(jobs) == {"weekday-mornings", "evenings", "sunday-upgrade"}
    assert jobs["weekday-mornings"].startswith("0 8 * * 1-5 ")
    assert jobs["sunday-upgrade"].startswith("0 3 * * 0 ")
    assert jobs["evenings"].endswith(" scale.yml -e replicas=1 -e model=demo")  # the schedule names its model
    # The entry's command (minus the schedule and user fields), with the fleet's settings from a file.
    command = jobs["evenings"].split(None, 6)[6]
    log_file = fleet.prefix / "var/log/model-runtime/schedules/evenings.log"
    before, int8_pid = fleet.releases(), fleet.replica_pids()[INT8_SERVER]
    held = FleetLock(LOCAL / LOCK_NAME)
    held.acquire(holder_of("upgrade.yml", {"MODEL_RUNTIME_RUN_ID": "manual-upgrade-7"}))
    try:
        skipped = subprocess.run(f"{command} -e @{fleet.settings_file()}", shell=True, capture_output=True,  # noqa: S602
                                 text=True, check=False)  # fmt: skip
    finally:
        held.release()
    assert skipped.returncode == LOCK_HELD
    assert "is held by run manual-upgrade-7 (upgrade.yml" in log_file.read_text()
    assert "skipped: another run holds the fleet's lock" in log_file.read_text()
    assert fleet.releases() == before  # nothing changed
    outcome = 'model_runtime_scheduled_run_exit_code{schedule="evenings", playbook="scale.yml"}'
    assert settle(lambda: fleet.prometheus.value(outcome) == LOCK_HELD)
    vault = fleet.root / "fleet-vars.vault.json"
    shutil.copy(fleet.settings_file(), vault)
    subprocess.run([Path(sys.executable).with_name("ansible-vault"), "encrypt", "--vault-password-file",
                    fleet.vault_password, vault], check=True, capture_output=True)  # fmt: skip
    assert KEY not in vault.read_text()
    with fleet.load(pause_s=LOAD_PAUSE_S) as traffic:
        traffic.wait_for(20)
        done = subprocess.run(f"{command} -e @{vault}", shell=True, capture_output=True,  # noqa: S602
                              text=True, check=False)  # fmt: skip
        traffic.wait_for(len(traffic.outcomes) + 20)
    log = log_file.read_text()
    status = (fleet.prefix / "var/lib/model-runtime/schedules/evenings.status").read_text().split()[0]
    assert done.returncode == 0, log[-3000:]
    assert status == "0"
    assert "scale.yml -e replicas=1" in log
    assert "PLAY RECAP" in log
    assert "exit 0" in log
    assert KEY not in log
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", log, re.MULTILINE)
    assert traffic.failures == []
    assert settle(lambda: fleet.prometheus.value(outcome) == 0)
    assert [state for _, _, state in fleet.releases().values()] == SCALED_TO_ONE
    assert fleet.supervisorctl("status", f"{SERVICE}-{REPLICAS}").split()[1] == "STOPPED"
    assert fleet.replica_pids()[INT8_SERVER] == int8_pid  # the other model's instance untouched
    # The scale run rewrote Prometheus's targets: a scaled-in instance is not scraped (nor alerted on).
    assert settle(lambda: fleet.scrape_targets("model-runtime") == scraped_instances(fleet, 1))


# The autoscaler's rules for the test below: one replica's 4 batch slots (OVERLOAD_SETTINGS), up to 2
# replicas, short cooldowns and calm period (a reading every 2 s averaged over 10 s: LocalFleet.autoscaler).
AUTOSCALE_POLICY = {"min_replicas": 1, "max_replicas": 2, "capacity_per_replica": 4,
                    "queue_per_replica_out": 1.0, "cooldown_out_s": 20, "cooldown_in_s": 10,
                    "stable_in_s": 10}  # fmt: skip


# The cloud group (in moto's server) and what one of its instances runs at once.
CLOUD_GROUP = "gpu-burst"
CLOUD_SCHEDULER = {"max_batch_size": 4}
# The cloud stand-in's answers: its model version is "test" (harness.server.RuntimeProcess).
CLOUD_FINGERPRINT = "demo@test"


def served_by_cloud(outcomes: list) -> int:
    return sum(1 for o in outcomes if o.fingerprint.endswith(CLOUD_FINGERPRINT))


def autoscaler(fleet: LocalFleet, enabled: bool) -> None:
    run = fleet.autoscaler(enabled, AUTOSCALE_POLICY, model="demo")
    assert run.returncode == 0, run.output[-4000:]


def decisions(fleet: LocalFleet, target: str = "metal") -> list[dict]:
    """The autoscaler's logged decisions for metal (the replicas) or the cloud (the burst group)."""
    return [entry for entry in fleet.autoscaler_decisions() if entry["target"] == target]


def actions(fleet: LocalFleet, target: str = "metal") -> list[str]:
    return [entry["decision"]["action"] for entry in decisions(fleet, target)]


def test_the_autoscaler_follows_an_overload_out_and_back_without_a_failed_request(fleet: LocalFleet) -> None:
    """From the one replica the schedule left: 7 clients without pause (7 sequences for its 4 batch
    slots) make a queue, the autoscaler adds a replica through scale.yml at its first overloaded
    reading, holds under the same steady load on two (no flapping), and takes the replica out again
    once a light load stays calm. (Its way out is the scale-up run under load the fleet is tested with.)"""
    autoscaler(fleet, enabled=True)
    with fleet.load(clients=7) as overload:
        # A decision is logged once its run has ended: the replica serves by then.
        assert settle(lambda: "out" in actions(fleet), timeout_s=400), actions(fleet)
        # Its scale run brought the scaled-in replica back: serving, in HAProxy, scraped.
        assert fleet.serving("demo") == 2
        assert fleet.server_states() == ALL_UP
        assert settle(lambda: fleet.scrape_targets("model-runtime") == scraped_instances(fleet, 2))
        out = actions(fleet).index("out")
        # The same load on two replicas, for eight readings more.
        assert settle(lambda: len(actions(fleet)) > out + 8, timeout_s=120)
        steady = decisions(fleet)[out + 1 : out + 9]
    with fleet.load(clients=1, pause_s=0.25) as light:
        assert settle(lambda: "in" in actions(fleet), timeout_s=400), actions(fleet)
    assert fleet.serving("demo") == 1
    autoscaler(fleet, enabled=False)
    assert overload.failures == []
    assert light.failures == []
    made = [entry["decision"] for entry in decisions(fleet)]
    changes = [entry for entry in decisions(fleet) if entry["decision"]["action"] != "hold"]
    assert [(c["decision"]["action"], c["decision"]["wanted"], c["run"]["result"]) for c in changes] == [
        ("out", 2, "done"), ("in", 1, "done")
    ]  # fmt: skip
    # It acted on its first reading that saw the queue: no overloaded reading was held before it.
    first_overloaded = next(d for d in made if "queued per replica >" in d["reason"])
    assert first_overloaded["action"] == "out", first_overloaded
    assert first_overloaded["inputs"]["queued"] > 0
    assert [d["decision"]["action"] for d in steady] == ["hold"] * len(steady), steady
    # The runs went through the control node's runner: its log, its lock, its status.
    log = (fleet.prefix / "var/log/model-runtime/schedules/autoscale.log").read_text()
    assert "scale.yml -e replicas=2" in log
    assert "scale.yml -e replicas=1" in log
    assert KEY not in log
    assert settle(lambda: fleet.scrape_targets("model-runtime") == scraped_instances(fleet, 1))


def test_the_autoscaler_in_dry_run_prints_a_decision_and_changes_nothing(fleet: LocalFleet) -> None:
    config = fleet.prefix / "var/lib/model-runtime/schedules/autoscaler.yml"
    wanting_two = fleet.root / "autoscaler-min-2.yml"
    wanting_two.write_text(config.read_text().replace("min_replicas: 1", "min_replicas: 2"))
    before = fleet.releases()
    done = subprocess.run(
        [str(REPO / ".venv/bin/python"), "-m", "fleet_ops", "autoscale", "--config", str(wanting_two),
         "--dry-run", "--once"], cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout[done.stdout.index("{") :])
    assert printed["dry_run"] is True
    assert (printed["decision"]["action"], printed["decision"]["wanted"]) == ("out", 2)
    assert "run" not in printed
    assert fleet.releases() == before


def test_burst_to_the_cloud_takes_the_overflow_and_drains_first_without_a_failed_request(
    fleet: LocalFleet, tmp_path: Path
) -> None:
    """Metal at its maximum (one replica here): 7 clients make a queue, the autoscaler raises the cloud
    group (boto3, moto's server) and opens the burst backend; the overflow, and only it, goes to the
    cloud. A light load afterwards stays on metal; the cloud drains, goes back to 0, and metal keeps its
    replica."""
    with s3_server() as endpoint:
        make_group(CLOUD_GROUP, max_size=2)
        outputs = tmp_path / "cloud-outputs.json"  # what `pulumi stack output --json` writes
        outputs.write_text(json.dumps({"autoscalingGroupName": CLOUD_GROUP, "endpointUrl": "https://x"}))
        credentials = tmp_path / "aws-credentials"
        credentials.write_text("[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
        burst = {"stack_outputs": str(outputs), "region": "us-east-1", "endpoint_url": endpoint,
                 "policy": {"capacity_per_instance": CLOUD_SCHEDULER["max_batch_size"], "cooldown_out_s": 60,
                            "cooldown_in_s": 10, "stable_in_s": 10}}  # fmt: skip
        with fleet.cloud as cloud:
            on = fleet.autoscaler(True, {**AUTOSCALE_POLICY, "max_replicas": 1}, model="demo", burst=burst,
                                  environment={"AWS_SHARED_CREDENTIALS_FILE": str(credentials)})  # fmt: skip
            assert on.returncode == 0, on.output[-4000:]
            with fleet.load(clients=7) as overload:
                assert settle(lambda: served_by_cloud(overload.outcomes) >= 20, timeout_s=400), (
                    actions(fleet, "cloud"),
                    fleet.server_checks(),
                )
            with fleet.load(clients=1, pause_s=0.25) as light:
                assert settle(lambda: "in" in actions(fleet, "cloud") and not cloud.running(), timeout_s=400)
            autoscaler(fleet, enabled=False)
            desired = describe_group(CLOUD_GROUP).desired
    assert overload.failures == [], overload.failures[:3]
    assert light.failures == [], light.failures[:3]
    assert desired == 0
    assert (cloud.started, cloud.stopped) == (1, 1)
    changes = [e for e in decisions(fleet, "cloud") if e["decision"]["action"] != "hold"]
    assert [(c["decision"]["action"], c["decision"]["wanted"], c["run"]["result"]) for c in changes] == [
        ("out", 1, "done"), ("in", 0, "done")
    ]  # fmt: skip
    assert "metal at its maximum (1)" in changes[0]["decision"]["reason"]
    # The overflow only: metal kept serving throughout; the light load never reached the cloud.
    assert served_by_cloud(overload.outcomes) < len(overload.outcomes)
    assert served_by_cloud(light.outcomes) == 0
    assert fleet.serving("demo") == 1
    log = (fleet.prefix / "var/log/model-runtime/schedules/autoscale.log").read_text()
    assert "burst.yml -e burst_state=ready" in log
    assert "burst.yml -e burst_state=drain" in log
    assert KEY not in log


def test_scale_below_the_minimum_is_refused_before_any_change(fleet: LocalFleet) -> None:
    before = fleet.releases()
    run = fleet.run("scale.yml", {"model": "demo", "replicas": 0})
    assert run.returncode != 0
    said = re.sub(r"\s+", " ", run.output)  # the YAML results fold long lines
    assert f"replicas=0 refused: the fleet allows 1 to {REPLICAS} serving instances of demo" in said
    assert fleet.releases() == before
