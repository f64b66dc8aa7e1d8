"""The fleet's model list (filter_plugins/models.py: the playbooks' filters, which fab reads too):
entries completed from the single-model variables, instances numbered across models, a run narrowed
to one model, and every mistake named by its entry and field before anything changes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from filter_plugins.api_keys import api_key_model_lists, key_id
from filter_plugins.models import (
    instance_models,
    instance_ports,
    model_entries,
    model_not_found_body,
    model_problems,
    models_for_host,
    record_versions,
    releases,
    wanted_name,
)
from model_runtime.server.errors import model_not_found

pytestmark = pytest.mark.unit

SINGLE = {
    "model_runtime_model_name": "demo",
    "model_runtime_instances": 2,
    "model_runtime_engine": "auto",
    "model_runtime_tensor_parallel_size": 1,
    "model_runtime_pipeline_parallel_size": 1,
}
GROUPS = {"all": ["a", "b"], "gpu_servers": ["a", "b"], "cpu_servers": ["b"]}
TWO = [{"name": "demo"}, {"name": "demo-int8", "instances": 1, "source": "/m/int8", "hosts": "cpu_servers"}]


def test_the_default_list_is_the_one_model_of_the_single_model_variables() -> None:
    [entry] = model_entries([{}], SINGLE)
    assert entry == {
        "name": "demo", "instances": 2, "engine": "auto",
        "tensor_parallel_size": 1, "pipeline_parallel_size": 1,
        "source": None, "ref": None, "registry": None, "version": None, "headers": None, "hosts": None,
    }  # fmt: skip
    assert instance_models([entry]) == {"1": "demo", "2": "demo"}


def test_a_host_numbers_the_instances_of_its_models_in_the_list_s_order() -> None:
    entries = model_entries(TWO, SINGLE)
    assert instance_models(models_for_host(entries, "a", ["gpu_servers"])) == {"1": "demo", "2": "demo"}
    on_b = models_for_host(entries, "b", ["gpu_servers", "cpu_servers"])
    assert instance_models(on_b) == {"1": "demo", "2": "demo", "3": "demo-int8"}
    by_name = model_entries([{"name": "x", "hosts": ["a"]}], SINGLE)
    assert models_for_host(by_name, "b", ["gpu_servers"]) == []


def test_a_run_on_one_model_takes_it_from_the_registry_when_the_reference_says_so() -> None:
    assert [wanted_name(w) for w in ("demo", "demo@stable", "demo-int8:v3", "", None)] == [
        "demo", "demo", "demo-int8", "", ""
    ]  # fmt: skip
    entries = model_entries(TWO, SINGLE, "demo-int8@stable")
    assert [(e["name"], e["ref"], e["source"]) for e in entries] == [
        ("demo", None, None),
        ("demo-int8", "demo-int8@stable", "/m/int8"),  # the reference wins over the source
    ]
    assert [e["ref"] for e in model_entries(TWO, SINGLE, "demo")] == [None, None]  # a name alone selects
    # An entry with a reference and no name is the model the reference names.
    assert model_entries([{"ref": "other:v1"}], SINGLE)[0]["name"] == "other"


def test_releases_say_what_each_model_s_instances_should_run() -> None:
    entries = model_entries([{"name": "demo"}, {"name": "demo-int8", "engine": "builtin"}], SINGLE)
    wanted = releases(entries, {"demo": {"version": "v2", "path": "/m/demo/v2"}}, "0.2.0")
    assert wanted["demo"] == {
        "runtime_version": "0.2.0", "model": "demo", "model_version": "v2", "model_path": "/m/demo/v2",
        "engine": "auto", "tensor_parallel_size": 1, "pipeline_parallel_size": 1,
    }  # fmt: skip
    # Not installed in this run (another model's upgrade, a status run): any version will do.
    assert (wanted["demo-int8"]["model_version"], wanted["demo-int8"]["engine"]) == ("", "builtin")


@pytest.mark.parametrize(
    ("models", "wanted", "problem"),
    [
        ([], "", "model_runtime_models: a list of one or more models"),
        ({"name": "demo"}, "", "model_runtime_models: a list of one or more models"),
        (["demo"], "", "model_runtime_models[0]: a mapping"),
        (
            [{"name": "demo", "replicas": 2}],
            "",
            "model_runtime_models[0]: unknown field(s) replicas; known: name",
        ),
        ([{"name": "demo", "instances": -1}], "", "model_runtime_models[0].instances: a whole number"),
        ([{"name": "demo", "instances": "two"}], "", "model_runtime_models[0].instances: a whole number"),
        (
            [{"name": "demo", "engine": "tgi"}],
            "",
            "model_runtime_models[0].engine: one of auto, builtin, vllm",
        ),
        ([{"name": "d", "tensor_parallel_size": 0}], "", "model_runtime_models[0].tensor_parallel_size"),
        (
            [{"name": "demo", "hosts": "gpu_serverz"}],
            "",
            "model_runtime_models[0].hosts: no such group or host",
        ),
        ([{"name": "demo", "hosts": [1]}], "", "model_runtime_models[0].hosts: a group's name or a list"),
        ([{"name": "../etc"}], "", "model_runtime_models[0].name '../etc': not a name"),
        ([{"name": "demo"}, {"name": "demo"}], "", "model_runtime_models[1].name: 'demo' is listed twice"),
        (TWO, "demo-fp8@stable", "model=demo-fp8@stable: not a model of this fleet (demo, demo-int8)"),
    ],
)
def test_each_mistake_is_named_by_its_entry_and_field(models: object, wanted: str, problem: str) -> None:
    problems = model_problems(models, SINGLE, wanted, GROUPS)
    assert problems, models
    assert problems[0].startswith(problem), problems


def test_a_good_list_has_no_problem() -> None:
    assert model_problems(TWO, SINGLE, "demo-int8@stable", GROUPS) == []
    assert model_problems([{}], SINGLE, "demo", GROUPS) == []
    assert model_problems([{"name": "x", "hosts": ["a", "cpu_servers"]}], SINGLE, "", GROUPS) == []


@given(st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=5))
def test_instances_are_numbered_one_to_n_without_a_gap(counts: list[int]) -> None:
    entries = model_entries([{"name": f"m{i}", "instances": n} for i, n in enumerate(counts)], SINGLE)
    numbered = instance_models(entries)
    assert list(numbered) == [str(i) for i in range(1, sum(counts) + 1)]
    assert [numbered.get(str(i)) for i in range(1, sum(counts) + 1)] == [
        f"m{i}" for i, n in enumerate(counts) for _ in range(n)
    ]


def test_the_load_balancer_answers_an_unknown_model_as_the_runtime_does() -> None:
    body = model_not_found_body("%[var(txn.model),json(utf8s)]")
    assert body == json.dumps(model_not_found("%[var(txn.model),json(utf8s)]").body())
    assert (
        json.loads(body.replace("%[var(txn.model),json(utf8s)]", "x"))["error"]["code"] == "model_not_found"
    )


def test_each_key_sees_the_served_models_it_may_use_and_no_key_is_in_the_map() -> None:
    lines = api_key_model_lists(["sk-all", "sk-int8 models=demo-int8,demo-fp8"], ["demo", "demo-int8"])
    seen = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1]) for line in lines}
    assert [m["id"] for m in seen[key_id("sk-all")]["data"]] == ["demo", "demo-int8"]
    assert [m["id"] for m in seen[key_id("sk-int8")]["data"]] == ["demo-int8"]  # demo-fp8 is not served
    assert seen[key_id("sk-all")]["object"] == "list"
    assert all("sk-" not in line for line in lines)


def test_a_pin_keeps_what_any_instance_runs_or_may_roll_back_to() -> None:
    records = [
        {
            "instances": {
                "1": {"model": "demo", "model_version": "v2"},
                "2": {"model": "chat", "model_version": "c1"},
            },
            "previous": {"1": {"model": "demo", "model_version": "v1"}},
        },
        {"instances": {"1": {"model": "demo", "model_version": "v3", "state": "scaled-in"}}},
        {},  # a host that runs nothing yet
        {"instances": {"1": {"model": "demo", "model_version": ""}}},  # a record from before versions
    ]
    assert record_versions(records, "demo") == ["v1", "v2", "v3"]
    assert record_versions(records, "chat") == ["c1"]
    assert record_versions(records, "other") == []


def test_instance_ports_are_two_an_instance_each_held_by_its_configuration() -> None:
    assert instance_ports("2", 8000, "9000", "/etc/model-runtime") == [
        {"port": 8000, "owner": "/etc/model-runtime/instance-1.yaml"},
        {"port": 9000, "owner": "/etc/model-runtime/instance-1.yaml"},
        {"port": 8001, "owner": "/etc/model-runtime/instance-2.yaml"},
        {"port": 9001, "owner": "/etc/model-runtime/instance-2.yaml"},
    ]
