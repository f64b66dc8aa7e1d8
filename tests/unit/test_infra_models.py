"""Several models from one endpoint (infra/Pulumi.multi.yaml), under pulumi.runtime.set_mocks: a GPU
group per model with its own target group and reference, the routing tier (routers behind the public
ALB, an internal ALB with a rule per model), who may talk to whom, the policies, and the models' keys
named in errors. One model keeps the direct path (test_infra_stacks.py)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config.errors import ConfigError
from infra.facts import RUNTIME_PORT
from infra.policy.rules import check_stack
from infra.routing import ROUTE_HEADER, ROUTER_PORT, haproxy_config
from tests.support.pulumi_mocks import ProgramRun, Recorded, run_program

pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws")]

GROUP = "aws:autoscaling/group:Group"
TARGET_GROUP = "aws:lb/targetGroup:TargetGroup"
RULE = "aws:lb/listenerRule:ListenerRule"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"


@cache
def multi() -> ProgramRun:
    return run_program("multi")


def user_data(template: Recorded) -> str:
    return base64.b64decode(template.inputs["userData"]).decode()


def boot_vars(run: ProgramRun, template_name: str) -> dict[str, Any]:
    files = {
        f["path"]: f["content"] for f in yaml.safe_load(user_data(run.named(template_name)))["write_files"]
    }
    return json.loads(files["/etc/model-runtime/boot/boot.json"])["vars"]


def test_each_model_has_its_own_group_target_group_and_reference() -> None:
    run = multi()
    groups = {g.name: g for g in run.of_type(GROUP)}
    assert set(groups) == {"gpu-demo-asg", "gpu-chat-asg", "router-asg"}
    assert run.outputs["autoscalingGroupNames"] == {"demo": "gpu-demo-asg", "chat": "gpu-chat-asg"}
    assert run.outputs["models"] == {"demo": "demo:20261128-101500.000000-a1b2c3", "chat": "chat@stable"}
    for name in ("demo", "chat"):
        target = run.named(f"router-{name}")
        assert target.type == TARGET_GROUP
        assert target.inputs["healthCheck"]["path"] == "/health/ready"
        assert groups[f"gpu-{name}-asg"].inputs["targetGroupArns"] == [target.state["arn"]]
        assert boot_vars(run, f"gpu-{name}-lt")["model_artifacts_ref"] == run.outputs["models"][name]
        # Each group tracks its own model's queue.
        dimension = boot_vars(run, f"gpu-{name}-lt")["cloud_metrics_dimensions"]
        assert dimension == {"Fleet": f"model-runtime-multi-{name}"}
    # GET /v1/models reaches one group: each lists the other's model beside its own.
    listed = {
        name: boot_vars(run, f"gpu-{name}-lt")["model_runtime_settings"]["server"]
        for name in ("demo", "chat")
    }
    assert listed == {"demo": {"listed_models": ["chat"]}, "chat": {"listed_models": ["demo"]}}
    # The model's own sizes and types over the shared fleet settings.
    demo, chat = groups["gpu-demo-asg"].inputs, groups["gpu-chat-asg"].inputs
    assert (demo["minSize"], demo["desiredCapacity"], demo["maxSize"]) == (1, 2, 6)
    assert (chat["minSize"], chat["desiredCapacity"], chat["maxSize"]) == (1, 1, 3)
    overrides = chat["mixedInstancesPolicy"]["launchTemplate"]["overrides"]
    assert [o["instanceType"] for o in overrides] == ["g6.12xlarge"]
    assert boot_vars(run, "gpu-chat-lt")["model_runtime_engine"] == "vllm"
    assert "model_runtime_engine" not in boot_vars(run, "gpu-demo-lt")
    assert demo["instanceRefresh"]["preferences"]["minHealthyPercentage"] == 90  # shared: fleet.refresh


def test_the_routers_read_the_model_and_the_internal_alb_routes_on_their_header() -> None:
    run = multi()
    internal = run.named("router-alb")
    assert internal.inputs["internal"] is True
    public = run.named("endpoint-alb")
    assert public.inputs["internal"] is False
    # The public ALB forwards its allow-list to the routers, which the router group registers into.
    (forward,) = [r for r in run.of_type(RULE) if r.name == "endpoint-forward-api"]
    routers_target = run.named("endpoint-runtime")
    assert routers_target.inputs["port"] == ROUTER_PORT
    assert forward.inputs["actions"] == [{"type": "forward", "targetGroupArn": routers_target.state["arn"]}]
    assert run.named("router-asg").inputs["targetGroupArns"] == [routers_target.state["arn"]]
    # The internal ALB: one rule per model, on the header and the API's paths; anything else a 404.
    listener = run.named("router-http")
    assert listener.inputs["defaultActions"][0]["fixedResponse"]["statusCode"] == "404"
    for name in ("demo", "chat"):
        rule = next(r for r in run.of_type(RULE) if r.name == f"router-{name}")
        header = rule.inputs["conditions"][0]["httpHeader"]
        assert (header["httpHeaderName"], header["values"]) == (ROUTE_HEADER, [name])
        assert rule.inputs["listenerArn"] == listener.state["arn"]
        target = next(t for t in run.of_type(TARGET_GROUP) if t.name == f"router-{name}")
        assert rule.inputs["actions"] == [{"type": "forward", "targetGroupArn": target.state["arn"]}]
    # The routers' HAProxy knows both models and sends to the internal ALB.
    text = user_data(run.named("router-lt"))
    config = yaml.safe_load(text)["write_files"][0]["content"]
    assert "acl known_model var(txn.model) -m str demo chat" in config
    assert f"{internal.state['dnsName']}:80" in config
    assert f"http-request del-header {ROUTE_HEADER}" in config


def test_who_may_talk_to_whom() -> None:
    run = multi()
    groups = {g.name: g.id for g in run.of_type("aws:ec2/securityGroup:SecurityGroup")}
    ingress = {(r.inputs["securityGroupId"], r.inputs.get("referencedSecurityGroupId"), r.inputs["fromPort"])
               for r in run.of_type(INGRESS) if "referencedSecurityGroupId" in r.inputs}  # fmt: skip
    assert ingress == {
        (groups["endpoint-instances"], groups["endpoint-lb"], ROUTER_PORT),  # routers <- public ALB
        (groups["router-lb"], groups["endpoint-instances"], 80),  # internal ALB <- routers
        (groups["router-gpu"], groups["router-lb"], RUNTIME_PORT),  # GPU instances <- internal ALB
    }
    for name in ("demo", "chat"):
        template = run.named(f"gpu-{name}-lt").inputs
        assert template["networkInterfaces"][0]["securityGroups"] == [groups["router-gpu"]]
    assert run.named("router-lt").inputs["networkInterfaces"][0]["securityGroups"] == [
        groups["endpoint-instances"]
    ]


def test_the_two_model_stack_passes_every_policy() -> None:
    assert check_stack(multi().policy_resources()) == []


def test_one_model_in_the_list_form_is_the_one_model_stack() -> None:
    listed = run_program("dev", {"model": None, "models": [{"ref": "demo@stable"}]})
    plain = run_program("dev")
    assert sorted(r.name for r in listed.resources) == sorted(r.name for r in plain.resources)
    assert listed.outputs["autoscalingGroupName"] == plain.outputs["autoscalingGroupName"] == "gpu-asg"
    assert listed.outputs["autoscalingGroupNames"] == {"demo": "gpu-asg"}
    assert not [r for r in plain.resources if r.name.startswith("router")]
    assert boot_vars(plain, "gpu-lt")["model_runtime_settings"]["server"] == {"listed_models": []}


@pytest.mark.parametrize(
    ("overrides", "key", "says"),
    [
        ({"models": []}, "models", "at least one"),
        ({"models": [{"ref": "demo@a"}, {"ref": "Demo@b"}]}, "models[1].name", "already models[0]'s name"),
        ({"models": [{"ref": "demo@a", "name": "de mo"}]}, "models[0].name", "not a model name"),
        ({"models": [{"ref": "demo@a", "name": "chat"}]}, "models[0].name", "its registry name"),
        ({"models": [{"ref": "demo@"}]}, "models[0].ref", "not a reference"),
        ({"models": [{"name": "demo"}]}, "models[0].ref", "is required"),
        ({"models": [{"ref": "demo@a", "minsize": 1}]}, "models[0].minsize", "unknown setting"),
        ({"models": [{"ref": "demo@a"}, {"ref": "chat@a", "maxSize": 0}]}, "models[1].maxSize", "at least 1"),
        ({"models": [{"ref": "demo@a", "runtimePort": 9000}]}, "models[0].runtimePort", "fleet.runtimePort"),
        # A shared value wrong for one model is named where it is written, for the model it failed.
        (
            {"models": [{"ref": "demo@a", "minSize": 3}]},
            "fleet.maxSize",
            "at least minSize (3), got 2 (for models[0])",
        ),
        ({"models": [{"ref": "demo@a"}], "model": "demo@a"}, "model", "list every model under models"),
        ({"model": None}, "models", "is required"),
        ({"models": "demo"}, "models", "must be a list"),
    ],
)
def test_a_bad_model_list_is_refused_naming_its_key(overrides: dict, key: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        run_program("dev", {"model": None, **overrides})
    assert caught.value.key == key, str(caught.value)
    assert says in str(caught.value)


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_the_router_configuration_is_valid_haproxy(tmp_path: Path) -> None:
    text = haproxy_config(["demo", "chat"], "127.0.0.1", body_limit_kib=1024, timeout_s=630)
    config = tmp_path / "haproxy.cfg"
    config.write_text(text.replace("/dev/log", "127.0.0.1:514"))  # no syslog socket in a test
    checked = subprocess.run(
        ["haproxy", "-c", "-f", str(config)], check=False, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
