"""The Pulumi program's resource graph for both example stacks, under pulumi.runtime.set_mocks (no CLI,
no AWS): what each component builds, how they are wired, what a configuration change rolls out."""

from __future__ import annotations

import base64
import gzip
import json
from collections import Counter
from functools import cache
from pathlib import Path

import pytest
import yaml

from infra.facts import REPO, RUNTIME_PORT
from infra.policy.rules import check_stack
from infra.userdata import BOOT_CONFIG_PATH, BOOT_SCRIPT_PATH, USER_DATA_LIMIT
from model_runtime.registry.registry import Registry
from model_runtime.registry.stores import LocalStore
from tests.support.pulumi_mocks import LOOKED_UP_AMI, ProgramRun, run_program

# pulumi_aws warns, as it loads, about resource types this program does not use.
pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws")]

COMPONENTS = {
    "model-runtime:fleet:Network",
    "model-runtime:fleet:ModelStore",
    "model-runtime:fleet:Endpoint",
    "model-runtime:fleet:GpuFleet",
}
LT = "aws:ec2/launchTemplate:LaunchTemplate"
GROUP = "aws:autoscaling/group:Group"


@cache
def program(stack: str) -> ProgramRun:
    return run_program(stack)


def user_data(run: ProgramRun) -> str:
    return base64.b64decode(run.one(LT).inputs["userData"]).decode()


def written(run: ProgramRun) -> dict[str, bytes]:
    files = {}
    for entry in yaml.safe_load(user_data(run))["write_files"]:
        content = entry["content"].encode()
        files[entry["path"]] = (
            gzip.decompress(base64.b64decode(content)) if entry.get("encoding") == "gz+b64" else content
        )
    return files


def boot_config(run: ProgramRun) -> dict:
    return json.loads(written(run)[BOOT_CONFIG_PATH])


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_every_resource_belongs_to_a_component(stack: str) -> None:
    run = program(stack)
    types = Counter(r.type for r in run.resources)
    assert {t for t in types if t.startswith("model-runtime:")} == COMPONENTS
    assert all(types[c] == 1 for c in COMPONENTS)
    for resource in run.resources:
        if resource.type in COMPONENTS:
            assert resource.parent_type == "pulumi:pulumi:Stack"
        else:
            assert resource.parent_type in COMPONENTS, (
                f"{resource.type} {resource.name} has no component parent"
            )


@pytest.mark.parametrize(("stack", "zones", "nats", "listeners"), [("dev", 2, 1, 1), ("prod", 3, 3, 2)])
def test_the_example_stacks_graph(stack: str, zones: int, nats: int, listeners: int) -> None:
    run = program(stack)
    subnets = run.of_type("aws:ec2/subnet:Subnet")
    private = [s for s in subnets if s.inputs["tags"]["tier"] == "private"]
    public = [s for s in subnets if s.inputs["tags"]["tier"] == "public"]
    assert len(private) == len(public) == zones
    assert len({s.inputs["availabilityZone"] for s in private}) == zones
    assert not any(s.inputs["mapPublicIpOnLaunch"] for s in subnets)
    assert len(run.of_type("aws:ec2/natGateway:NatGateway")) == nats
    assert len(run.of_type("aws:lb/listener:Listener")) == listeners
    group = run.one(GROUP).inputs
    # The group is in the private subnets, behind the load balancer's target group, health from it.
    # (sorted: the mocks record resources in the order their registrations finish, which varies)
    assert sorted(group["vpcZoneIdentifiers"]) == sorted(s.id for s in private)
    assert group["targetGroupArns"] == [run.one("aws:lb/targetGroup:TargetGroup").state["arn"]]
    assert group["healthCheckType"] == "ELB"
    balancer = run.one("aws:lb/loadBalancer:LoadBalancer").inputs
    assert sorted(balancer["subnets"]) == sorted(s.id for s in public)
    assert set(run.outputs) >= {
        "endpointUrl",
        "bucketName",
        "registryUrl",
        "autoscalingGroupName",
        "instanceRoleName",
        "instanceRoleArn",
    }
    assert run.outputs["autoscalingGroupName"] == run.one(GROUP).state["name"]
    assert run.outputs["registryUrl"] == f"s3://{run.outputs['bucketName']}/registry"


def test_dev_is_one_small_spot_instance_over_http() -> None:
    run = program("dev")
    group = run.one(GROUP).inputs
    assert (group["minSize"], group["desiredCapacity"], group["maxSize"]) == (1, 1, 2)
    distribution = group["mixedInstancesPolicy"]["instancesDistribution"]
    assert distribution["onDemandBaseCapacity"] == 0
    assert distribution["onDemandPercentageAboveBaseCapacity"] == 0
    assert group["capacityRebalance"] is True
    (listener,) = run.of_type("aws:lb/listener:Listener")
    assert (listener.inputs["protocol"], listener.inputs["port"]) == ("HTTP", 80)
    assert run.outputs["endpointUrl"].startswith("http://")
    # No amiId in dev: the newest AMI matching the name (the mocks' answer).
    assert run.one(LT).inputs["imageId"] == LOOKED_UP_AMI


def test_prod_is_an_on_demand_base_with_spot_above_over_https() -> None:
    run = program("prod")
    group = run.one(GROUP).inputs
    assert (group["minSize"], group["desiredCapacity"], group["maxSize"]) == (1, 3, 6)
    distribution = group["mixedInstancesPolicy"]["instancesDistribution"]
    assert distribution["onDemandBaseCapacity"] == 2
    assert distribution["onDemandPercentageAboveBaseCapacity"] == 25
    assert distribution["spotAllocationStrategy"] == "capacity-optimized"
    overrides = group["mixedInstancesPolicy"]["launchTemplate"]["overrides"]
    assert [o["instanceType"] for o in overrides] == ["g6e.xlarge", "g6.2xlarge", "g5.2xlarge"]
    listeners = {r.inputs["port"]: r.inputs for r in run.of_type("aws:lb/listener:Listener")}
    assert listeners[443]["protocol"] == "HTTPS"
    assert listeners[443]["certificateArn"].startswith("arn:aws:acm:")
    assert listeners[80]["defaultActions"][0]["type"] == "redirect"
    assert run.outputs["endpointUrl"].startswith("https://")
    assert run.one(LT).inputs["imageId"] == "ami-0a1b2c3d4e5f67890"  # pinned


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_launch_template(stack: str) -> None:
    run = program(stack)
    template = run.one(LT).inputs
    assert template["metadataOptions"]["httpTokens"] == "required"
    assert template["metadataOptions"]["httpPutResponseHopLimit"] in (1, 2)
    (volume,) = template["blockDeviceMappings"]
    assert volume["deviceName"] == "/dev/sda1"  # the AMI's root device
    assert volume["ebs"]["encrypted"] == "true"
    assert volume["ebs"]["volumeType"] == "gp3"
    model_gib = {"dev": 1, "prod": 20}[stack]
    assert volume["ebs"]["volumeSize"] == {"dev": 100, "prod": 150}[stack] + 2 * model_gib
    (interface,) = template["networkInterfaces"]
    assert interface["associatePublicIpAddress"] == "false"
    assert "keyName" not in template  # no SSH key by default
    # The group runs this template's exact version (a refresh rolls to it, a rollback back from it).
    spec = run.one(GROUP).inputs["mixedInstancesPolicy"]["launchTemplate"]["launchTemplateSpecification"]
    assert spec == {"launchTemplateId": run.one(LT).id, "version": str(run.one(LT).state["latestVersion"])}


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_instance_refresh_rolls_back_on_failed_health(stack: str) -> None:
    refresh = program(stack).one(GROUP).inputs["instanceRefresh"]
    assert refresh["strategy"] == "Rolling"
    preferences = refresh["preferences"]
    assert preferences["autoRollback"] is True
    assert preferences["skipMatching"] is True
    expected = {"dev": (100, 150, [100]), "prod": (90, 150, [34, 100])}[stack]
    assert (
        preferences["minHealthyPercentage"],
        preferences["maxHealthyPercentage"],
        preferences["checkpointPercentages"],
    ) == expected


def test_a_runtime_or_model_change_is_a_new_launch_template_version() -> None:
    base = program("dev")
    again = run_program("dev")
    # Deterministic: the same configuration renders the same user data (no spurious refresh).
    assert user_data(again) == user_data(base)
    for change in ({"runtimeVersion": "0.2.0"}, {"model": "demo:20261201-090000.000000-ffffff"}):
        changed = run_program("dev", change)
        assert user_data(changed) != user_data(base), change
        config = boot_config(changed)
        assert config["runtime_version"] == changed.outputs["runtimeVersion"]
        assert config["vars"]["model_artifacts_ref"] == changed.outputs["model"]
        # Only the launch template's content moves: the group refers to its latest version and
        # has refresh preferences, so the provider starts an instance refresh.
        assert changed.one(GROUP).inputs == base.one(GROUP).inputs
    assert boot_config(run_program("dev", {"runtimeVersion": "0.2.0"}))["bundle_key"] == (
        "bundles/model-runtime-bundle-0.2.0.tar.gz"
    )


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_user_data_boots_with_the_roles_and_holds_no_secret(stack: str) -> None:
    run = program(stack)
    text = user_data(run)
    assert len(text.encode()) <= USER_DATA_LIMIT
    assert text.startswith("#cloud-config\n")
    document = yaml.safe_load(text)
    assert document["packages"] == ["python3-boto3", "python3-venv"]
    assert document["runcmd"] == [["/usr/bin/python3", BOOT_SCRIPT_PATH, BOOT_CONFIG_PATH]]
    files = written(run)
    assert files[BOOT_SCRIPT_PATH] == (REPO / "infra/boot.py").read_bytes()
    config = json.loads(files[BOOT_CONFIG_PATH])
    assert config["api_keys"] == f"ssm:/model-runtime/{stack}/api-keys"
    assert config["bucket"] == run.outputs["bucketName"]
    assert config["vars"]["model_artifacts_registry"] == run.outputs["registryUrl"]
    assert config["vars"]["model_runtime_base_port"] == RUNTIME_PORT
    assert "model_runtime_api_keys" not in config["vars"]
    assert {e["path"]: e["permissions"] for e in document["write_files"]}[BOOT_CONFIG_PATH] == "0600"


def test_schedules_come_from_the_schedule_file() -> None:
    for stack, inventory in (("dev", "local"), ("prod", "example")):
        entries = yaml.safe_load((REPO / f"inventories/{inventory}/group_vars/all/schedules.yml").read_text())
        scale = [e for e in entries["fleet_schedules"] if e["kind"] == "scale"]
        actions = {
            a.inputs["scheduledActionName"]: a.inputs
            for a in program(stack).of_type("aws:autoscaling/schedule:Schedule")
        }
        assert set(actions) == {e["name"] for e in scale}
        for entry in scale:
            action = actions[entry["name"]]
            assert action["recurrence"] == entry["cron"]
            assert action["desiredCapacity"] == entry["replicas"]
            assert (action["minSize"], action["maxSize"]) == (-1, -1)  # bounds unchanged
            assert action["timeZone"] == "Etc/UTC"
            assert action["autoscalingGroupName"] == program(stack).one(GROUP).state["name"]
        assert any("not scheduled: sunday-upgrade" in line for line in program(stack).log)
    assert run_program("dev", {"fleet.schedules": "none"}).of_type("aws:autoscaling/schedule:Schedule") == []


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_target_tracking_on_queue_per_instance_and_requests_as_an_option(stack: str) -> None:
    run = program(stack)
    policies = {p.name: p.inputs for p in run.of_type("aws:autoscaling/policy:Policy")}
    assert {p["policyType"] for p in policies.values()} == {"TargetTrackingScaling"}
    # The group's average of what each instance publishes (the cloud_metrics role, configured by the
    # user data with the same namespace and fleet).
    queue = policies["gpu-queue-per-instance"]["targetTrackingConfiguration"]
    metric = queue["customizedMetricSpecification"]
    published = boot_config(run)["vars"]
    assert published["cloud_metrics_enabled"] is True
    assert (metric["namespace"], metric["metricName"], metric["statistic"]) == (
        published["cloud_metrics_namespace"], "QueueDepth", "Average"
    )  # fmt: skip
    assert published["cloud_metrics_dimensions"] == {"Fleet": f"model-runtime-{stack}"}
    assert metric["metricDimensions"] == [{"name": "Fleet", "value": f"model-runtime-{stack}"}]
    assert queue["targetValue"] == 2.0
    requests = policies["gpu-requests-per-instance"]["targetTrackingConfiguration"]
    label = requests["predefinedMetricSpecification"]
    assert label["predefinedMetricType"] == "ALBRequestCountPerTarget"
    balancer = run.one("aws:lb/loadBalancer:LoadBalancer").state["arnSuffix"]
    target_group = run.one("aws:lb/targetGroup:TargetGroup").state["arnSuffix"]
    assert label["resourceLabel"] == f"{balancer}/{target_group}"
    assert requests["targetValue"] == {"dev": 60, "prod": 120}[stack]
    off = run_program(stack, {"fleet.targetQueuePerInstance": 0, "fleet.targetRequestsPerInstance": 0})
    assert off.of_type("aws:autoscaling/policy:Policy") == []


def test_instances_accept_the_runtime_port_from_the_load_balancer_only() -> None:
    run = program("prod")
    groups = {r.name: r for r in run.of_type("aws:ec2/securityGroup:SecurityGroup")}
    instance_sg, lb_sg = groups["endpoint-instances"].id, groups["endpoint-lb"].id
    ingress = [r.inputs for r in run.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")]
    to_instances = [r for r in ingress if r["securityGroupId"] == instance_sg]
    assert to_instances == [
        {
            **to_instances[0],
            "referencedSecurityGroupId": lb_sg,
            "fromPort": RUNTIME_PORT,
            "toPort": RUNTIME_PORT,
        }
    ]
    assert "cidrIpv4" not in to_instances[0]
    to_lb = sorted((r["fromPort"], r.get("cidrIpv4")) for r in ingress if r["securityGroupId"] == lb_sg)
    assert to_lb == [(80, "0.0.0.0/0"), (443, "0.0.0.0/0")]
    target_group = run.one("aws:lb/targetGroup:TargetGroup").inputs
    assert target_group["healthCheck"]["path"] == "/health/ready"
    assert target_group["port"] == RUNTIME_PORT


LISTENER = "aws:lb/listener:Listener"
LISTENER_RULE = "aws:lb/listenerRule:ListenerRule"


@pytest.mark.parametrize(("stack", "serving_port"), [("dev", 80), ("prod", 443)])
def test_the_load_balancer_forwards_only_the_api_and_readiness(stack: str, serving_port: int) -> None:
    run = program(stack)
    listeners = {r.inputs["port"]: r for r in run.of_type(LISTENER)}
    serving = listeners[serving_port]
    # Any path no rule allows gets a 404 from the load balancer itself, in the OpenAI error envelope.
    (default,) = serving.inputs["defaultActions"]
    assert default["type"] == "fixed-response"
    response = default["fixedResponse"]
    assert (response["statusCode"], response["contentType"]) == ("404", "application/json")
    assert json.loads(response["messageBody"]) == {
        "error": {"message": "Not Found", "type": "invalid_request_error", "param": None, "code": "not_found"}
    }
    assert not any(a["type"] == "forward" for r in listeners.values() for a in r.inputs["defaultActions"])
    # The only forwarding: one rule on the serving listener, for /v1/* and the health path.
    (rule,) = run.of_type(LISTENER_RULE)
    assert rule.inputs["listenerArn"] == serving.state["arn"]
    assert rule.inputs["actions"] == [
        {"type": "forward", "targetGroupArn": run.one("aws:lb/targetGroup:TargetGroup").state["arn"]}
    ]
    assert rule.inputs["conditions"] == [{"pathPattern": {"values": ["/v1/*", "/health/ready"]}}]


@pytest.mark.parametrize(
    ("request_timeout_s", "delay"),
    [(None, 630), (1200, 1230), (5, 35), (90.5, 121), (3590, 3600), (3600, 3600)],
)
def test_an_instance_leaving_the_group_may_finish_its_longest_request(
    request_timeout_s: float | None, delay: int
) -> None:
    # The runtime's own limit (its default when the stack says nothing), plus a grace, within the
    # ALB's longest deregistration delay (3600 s).
    settings = {"scheduler": {"request_timeout_s": request_timeout_s}} if request_timeout_s else None
    run = run_program("dev", {"fleet.runtimeSettings": settings})
    assert run.one("aws:lb/targetGroup:TargetGroup").inputs["deregistrationDelay"] == delay
    if request_timeout_s:
        assert boot_config(run)["vars"]["model_runtime_settings"]["scheduler"] == settings["scheduler"]


def test_the_engine_and_its_parallel_sizes_reach_the_role_as_part_of_the_release() -> None:
    model = {"engine": "vllm", "tensor_parallel_size": 2, "pipeline_parallel_size": 2, "dtype": "bfloat16"}
    lock = "{{ lookup('ansible.builtin.file', 'requirements/vllm-cu128.lock') }}"
    run = run_program(
        "dev",
        {
            "fleet.instanceTypes": ["g6.12xlarge"],
            "fleet.runtimeSettings": {"model": model},
            "fleet.vllmRequirement": lock,
        },
    )
    role_vars = boot_config(run)["vars"]
    assert role_vars["model_runtime_engine"] == "vllm"
    assert role_vars["model_runtime_tensor_parallel_size"] == 2
    assert role_vars["model_runtime_pipeline_parallel_size"] == 2
    assert role_vars["model_runtime_gpus_per_instance"] == 4  # the instance's one instance owns them
    assert role_vars["model_runtime_vllm_requirement"] == lock
    # The rest stays runtime settings; the role refuses these keys there (they are the release's).
    assert role_vars["model_runtime_settings"]["model"] == {"dtype": "bfloat16"}
    plain = boot_config(run_program("dev"))["vars"]
    assert not {"model_runtime_engine", "model_runtime_gpus_per_instance"} & plain.keys()


def test_the_bucket_is_versioned_encrypted_private_and_tls_only() -> None:
    run = program("prod")
    bucket = run.one("aws:s3/bucket:Bucket")
    assert bucket.inputs["bucket"] == "example-model-runtime-artifacts"
    assert (
        run.one("aws:s3/bucketVersioning:BucketVersioning").inputs["versioningConfiguration"]["status"]
        == "Enabled"
    )
    sse = run.one(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
    ).inputs
    assert sse["bucket"] == bucket.id
    assert sse["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "AES256"
    lifecycle = run.one("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration").inputs["rules"]
    assert lifecycle[0]["noncurrentVersionExpiration"]["noncurrentDays"] == 30
    policy = json.loads(run.one("aws:s3/bucketPolicy:BucketPolicy").inputs["policy"])
    (deny,) = policy["Statement"]
    assert deny["Effect"] == "Deny"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny["Resource"] == [bucket.state["arn"], f"{bucket.state['arn']}/*"]


@pytest.mark.parametrize(("stack", "pinned"), [("prod", ["20261128-101500.000000-a1b2c3"]), ("dev", None)])
def test_a_pinned_model_version_is_kept_from_gc_by_the_stack(
    stack: str, pinned: list[str] | None, tmp_path: Path
) -> None:
    """prod boots demo:VERSION: the stack pins that version in the registry (dev follows an alias, whose
    history gc keeps anyway). The object is what the registry itself reads as a pin."""
    objects = program(stack).of_type("aws:s3/bucketObjectv2:BucketObjectv2")
    if pinned is None:
        assert objects == []
        return
    (pin,) = objects
    holder = f"stack-model-runtime-{stack}"
    assert pin.inputs["key"] == f"registry/demo/pins/{holder}.json"
    (tmp_path / "demo" / "pins").mkdir(parents=True)
    (tmp_path / "demo" / "pins" / f"{holder}.json").write_text(pin.inputs["content"])
    assert Registry(LocalStore(tmp_path)).pins("demo") == {holder: pinned}


def test_the_instance_role_reads_the_bucket_and_its_keys_and_nothing_more() -> None:
    run = program("prod")
    policy = json.loads(run.one("aws:iam/rolePolicy:RolePolicy").inputs["policy"])
    statements = {s["Sid"]: s for s in policy["Statement"]}
    bucket = run.one("aws:s3/bucket:Bucket").state["arn"]
    assert statements["ReadModelsAndBundles"]["Action"] == "s3:GetObject"
    assert statements["ReadModelsAndBundles"]["Resource"] == [f"{bucket}/registry/*", f"{bucket}/bundles/*"]
    assert statements["ReadApiKeys"] == {
        "Sid": "ReadApiKeys",
        "Effect": "Allow",
        "Action": "ssm:GetParameter",
        "Resource": "arn:aws:ssm:us-east-1:123456789012:parameter/model-runtime/prod/api-keys",
    }
    actions = [
        a
        for s in policy["Statement"]
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    ]
    assert not any(a.endswith("*") for a in actions)
    # Metrics into the fleet's namespace only (PutMetricData names no resource).
    assert statements["PublishFleetMetrics"]["Action"] == "cloudwatch:PutMetricData"
    assert statements["PublishFleetMetrics"]["Condition"] == {
        "StringEquals": {"cloudwatch:namespace": "ModelRuntime"}
    }
    assert not any(a.startswith(("s3:Put", "s3:Delete", "iam:", "ec2:")) for a in actions)
    assert run.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment") == []  # no managed policies
    assert (
        run.one("aws:iam/instanceProfile:InstanceProfile").inputs["role"]
        == run.one("aws:iam/role:Role").state["name"]
    )


def test_a_customer_managed_key_of_the_api_keys_may_decrypt_them() -> None:
    key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    run = run_program("dev", {"apiKeysKmsKeyArn": key})
    policy = json.loads(run.one("aws:iam/rolePolicy:RolePolicy").inputs["policy"])
    decrypt = [s for s in policy["Statement"] if s["Action"] == "kms:Decrypt"]
    assert decrypt == [
        {"Sid": "DecryptWithStackKeys", "Effect": "Allow", "Action": "kms:Decrypt", "Resource": [key]}
    ]
    assert not any(
        s["Action"] == "kms:Decrypt"
        for s in json.loads(program("dev").one("aws:iam/rolePolicy:RolePolicy").inputs["policy"])["Statement"]
    )


def test_without_nat_the_instances_reach_s3_and_ssm_through_endpoints() -> None:
    run = run_program("dev", {"network.nat": "none", "apiKeys": "secretsmanager:model-runtime/dev/api-keys"})
    assert run.of_type("aws:ec2/natGateway:NatGateway") == []
    endpoints = {
        e.inputs["serviceName"].rsplit(".", 1)[-1]: e.inputs
        for e in run.of_type("aws:ec2/vpcEndpoint:VpcEndpoint")
    }
    assert set(endpoints) == {"s3", "ssm", "ssmmessages", "ec2messages", "monitoring", "secretsmanager"}
    assert endpoints["s3"]["vpcEndpointType"] == "Gateway"
    assert all(e["privateDnsEnabled"] for name, e in endpoints.items() if name != "s3")
    private_tables = [t for t in run.of_type("aws:ec2/routeTable:RouteTable") if "private" in t.name]
    assert all(t.inputs.get("routes", []) == [] for t in private_tables)
    policy = json.loads(run.one("aws:iam/rolePolicy:RolePolicy").inputs["policy"])
    keys = next(s for s in policy["Statement"] if s["Sid"] == "ReadApiKeys")
    assert keys["Action"] == "secretsmanager:GetSecretValue"
    assert (
        keys["Resource"]
        == "arn:aws:secretsmanager:us-east-1:123456789012:secret:model-runtime/dev/api-keys-??????"
    )
    assert check_stack(run.policy_resources()) == []


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_example_stacks_pass_every_policy(stack: str) -> None:
    assert check_stack(program(stack).policy_resources()) == []
