"""The guardrails (infra/policy/rules.py) over the resources the program registers under mocks: the
example stacks pass (test_infra_stacks.py); here each guardrail must catch its violation, put into an
otherwise good graph. The policy pack's wrappers (infra/policy/pack.py) are checked to report exactly
what the rules find, given what pulumi_policy passes them."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from functools import cache
from types import SimpleNamespace
from typing import Any

import pytest

from infra.facts import RUNTIME_PORT
from infra.policy import rules
from infra.policy.pack import resource_validator, stack_validator
from infra.policy.rules import Resource, check_resource, check_stack
from tests.support.pulumi_mocks import ProgramRun, run_program

# pulumi_aws warns, as it loads, about resource types this program does not use.
pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws")]


@cache
def prod() -> ProgramRun:
    return run_program("prod")


def graph() -> list[Resource]:
    return [replace(r, props=copy.deepcopy(dict(r.props))) for r in prod().policy_resources()]


def edit(resources: list[Resource], name: str, change: Callable[[dict], Any]) -> list[Resource]:
    """The graph with one resource's properties changed in place by change(props)."""
    out = []
    for resource in resources:
        props = dict(resource.props)
        if resource.name == name:
            change(props)
        out.append(replace(resource, props=props))
    return out


def violations(resources: list[Resource]) -> list[tuple[str, str, str]]:
    return [(v.policy, v.resource, v.message) for v in check_stack(resources)]


def only(resources: list[Resource], policy: str, resource: str, says: str) -> None:
    found = violations(resources)
    assert len(found) == 1, found
    assert found[0][:2] == (policy, resource)
    assert says in found[0][2]


# --- world-open ports -----------------------------------------------------------------------------
def world_rule(port: int, cidr: str = "0.0.0.0/0", protocol: str = "tcp") -> Resource:
    return Resource(
        rules.INGRESS_RULE,
        f"open-{port}",
        {
            "securityGroupId": "endpoint-instances-id",
            "ipProtocol": protocol,
            "fromPort": port,
            "toPort": port,
            "cidrIpv6" if ":" in cidr else "cidrIpv4": cidr,
        },
    )


def test_a_world_open_ssh_port_is_refused() -> None:
    only([*graph(), world_rule(22)], "no-world-open-admin-or-runtime-port", "open-22", "port 22 (SSH)")
    only([*graph(), world_rule(22, "::/0")], "no-world-open-admin-or-runtime-port", "open-22", "from ::/0")


def test_a_world_open_runtime_port_is_refused() -> None:
    def open_to_world(props: dict) -> None:
        del props["referencedSecurityGroupId"]
        props["cidrIpv4"] = "0.0.0.0/0"

    resources = edit(graph(), "endpoint-instances-from-lb", open_to_world)
    only(
        resources,
        "no-world-open-admin-or-runtime-port",
        "endpoint-instances-from-lb",
        f"port {RUNTIME_PORT} (the runtime)",
    )


def test_ranges_protocols_and_older_rule_types_are_checked_too() -> None:
    wide = Resource(
        rules.SECURITY_GROUP_RULE,
        "wide",
        {"type": "ingress", "protocol": "tcp", "fromPort": 0, "toPort": 65535, "cidrBlocks": ["0.0.0.0/0"]},
    )
    assert "including 22 (SSH)" in check_resource(wide)[0].message
    inline = Resource(
        rules.SECURITY_GROUP,
        "inline",
        {
            "ingress": [
                {"protocol": "-1", "fromPort": 0, "toPort": 0, "cidrBlocks": ["10.0.0.0/8", "0.0.0.0/0"]}
            ]
        },
    )
    assert "every port" in check_resource(inline)[0].message
    egress_like = Resource(
        rules.SECURITY_GROUP_RULE,
        "out",
        {"type": "egress", "protocol": "-1", "fromPort": 0, "toPort": 0, "cidrBlocks": ["0.0.0.0/0"]},
    )
    assert check_resource(egress_like) == []
    # The listeners' own ports are what the world may reach; a private network may reach anything.
    assert check_resource(world_rule(443)) == check_resource(world_rule(80)) == []
    assert check_resource(world_rule(22, "10.0.0.0/8")) == []


# World-open is containment, not spelling: any source outside private address space is the world.
@pytest.mark.parametrize(
    "cidr",
    [
        "0.0.0.0/0",
        "0.0.0.0/00",
        "0.0.0.0/1",
        "128.0.0.0/1",
        "::/0",
        "0::/0",
        "0000:0000::/0",
        "8000::/1",
        "::ffff:0:0/96",  # every IPv4 address, IPv4-mapped
        "10.0.0.0/7",  # 10/8 and 11/8: half of it is public
        "172.0.0.0/8",
        "203.0.113.7/32",  # one public address is still the internet's
        "2001:db8::/32",
        "everyone",  # not a network: counted as public
    ],
)
def test_an_admin_port_open_beyond_private_networks_is_refused_however_spelled(cidr: str) -> None:
    only([*graph(), world_rule(22, cidr)], "no-world-open-admin-or-runtime-port", "open-22", "port 22 (SSH)")
    assert check_resource(world_rule(443, cidr)) == []  # the listeners' ports are for the world


@pytest.mark.parametrize(
    "cidr",
    [
        "10.0.0.0/8",
        "10.40.3.0/24",
        "10.0.0.1/8",
        "172.16.0.0/12",
        "192.168.1.5/32",
        "100.64.0.0/10",
        "fd00::/8",
    ],
)
def test_an_admin_port_open_to_a_private_network_is_allowed(cidr: str) -> None:
    assert check_resource(world_rule(22, cidr)) == []


def test_a_list_of_networks_covering_the_internet_is_refused() -> None:
    halves = Resource(
        rules.SECURITY_GROUP,
        "halves",
        {
            "ingress": [
                {
                    "protocol": "tcp",
                    "fromPort": RUNTIME_PORT,
                    "toPort": RUNTIME_PORT,
                    "cidrBlocks": ["0.0.0.0/1", "128.0.0.0/1"],
                    "ipv6CidrBlocks": ["0::/1", "8000::/1"],
                }
            ]
        },
    )
    found = check_resource(halves)
    assert [v.message.split(" (")[0] for v in found] == [
        "ingress from 0.0.0.0/1",
        "ingress from 128.0.0.0/1",
        "ingress from 0::/1",
        "ingress from 8000::/1",
    ]
    assert f"0::/1 (::/1, holds public addresses) to port {RUNTIME_PORT} (the runtime)" in found[2].message
    older = Resource(
        rules.SECURITY_GROUP_RULE,
        "older",
        {"type": "ingress", "protocol": "-1", "fromPort": 0, "toPort": 0, "ipv6CidrBlocks": ["0::/0"]},
    )
    assert "every port" in check_resource(older)[0].message


# --- instances ------------------------------------------------------------------------------------
def test_a_missing_imdsv2_requirement_is_refused() -> None:
    resources = edit(graph(), "gpu-lt", lambda p: p["metadataOptions"].update(httpTokens="optional"))
    only(resources, "imdsv2-required", "gpu-lt", "http_tokens is optional, not required")
    resources = edit(graph(), "gpu-lt", lambda p: p.pop("metadataOptions"))
    assert {v[0] for v in violations(resources)} == {"imdsv2-required"}
    resources = edit(graph(), "gpu-lt", lambda p: p["metadataOptions"].update(httpPutResponseHopLimit=3))
    only(resources, "imdsv2-required", "gpu-lt", "hop_limit is 3, not 1 or 2")


def test_publishing_metrics_into_any_namespace_is_refused() -> None:
    def unscoped(props: dict) -> None:
        if "policy" not in props:  # the role and its profile share the policy's name
            return
        document = json.loads(props["policy"])
        for statement in document["Statement"]:
            statement.pop("Condition", None)
        props["policy"] = json.dumps(document)

    says = "statement PublishFleetMetrics allows cloudwatch:PutMetricData without a cloudwatch:namespace"
    only(edit(graph(), "gpu-instance", unscoped), "metrics-publishing-scoped", "gpu-instance", says)


def test_an_unencrypted_volume_is_refused() -> None:
    resources = edit(
        graph(), "gpu-lt", lambda p: p["blockDeviceMappings"][0]["ebs"].update(encrypted="false")
    )
    only(resources, "volumes-encrypted", "gpu-lt", "volume /dev/sda1 is not encrypted")
    resources = edit(graph(), "gpu-lt", lambda p: p["blockDeviceMappings"][0]["ebs"].pop("encrypted"))
    only(resources, "volumes-encrypted", "gpu-lt", "not encrypted")
    assert [v.policy for v in check_resource(Resource(rules.VOLUME, "data", {"size": 100}))] == [
        "volumes-encrypted"
    ]
    assert check_resource(Resource(rules.VOLUME, "data", {"size": 100, "encrypted": True})) == []


def test_a_public_instance_ip_is_refused() -> None:
    resources = edit(
        graph(), "gpu-lt", lambda p: p["networkInterfaces"][0].update(associatePublicIpAddress="true")
    )
    only(resources, "no-public-instance-ip", "gpu-lt", "asks for a public IP address")
    resources = edit(graph(), "network-private-1", lambda p: p.update(mapPublicIpOnLaunch=True))
    only(
        resources,
        "group-in-private-subnets",
        "gpu-asg",
        "subnet network-private-1 gives instances a public IP",
    )
    instance = Resource(
        rules.INSTANCE,
        "box",
        {
            "associatePublicIpAddress": True,
            "metadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 1},
            "rootBlockDevice": {"encrypted": True},
        },
    )
    assert [v.policy for v in check_resource(instance)] == ["no-public-instance-ip"]


# --- the group and the load balancer -----------------------------------------------------------
def test_a_single_az_group_is_refused() -> None:
    resources = edit(graph(), "gpu-asg", lambda p: p.update(vpcZoneIdentifiers=p["vpcZoneIdentifiers"][:1]))
    only(resources, "group-spans-availability-zones", "gpu-asg", "single availability zone")
    # Three subnets, one zone: caught by what the subnets say.
    resources = graph()
    for name in ("network-private-1", "network-private-2"):
        resources = edit(resources, name, lambda p: p.update(availabilityZone="us-east-1a"))
    only(
        resources,
        "group-in-private-subnets",
        "gpu-asg",
        "all of the group's subnets are in one availability zone",
    )


def test_a_health_check_not_on_ready_is_refused() -> None:
    resources = edit(graph(), "endpoint-runtime", lambda p: p["healthCheck"].update(path="/health/live"))
    only(resources, "health-check-on-ready", "endpoint-runtime", "on /health/live, not /health/ready")
    resources = edit(graph(), "endpoint-runtime", lambda p: p["healthCheck"].update(enabled=False))
    only(resources, "health-check-on-ready", "endpoint-runtime", "no health check")
    resources = edit(graph(), "endpoint-runtime", lambda p: p.pop("healthCheck"))
    only(resources, "health-check-on-ready", "endpoint-runtime", "no health check")
    resources = edit(graph(), "gpu-asg", lambda p: p.update(healthCheckType="EC2"))
    only(resources, "group-health-from-load-balancer", "gpu-asg", "health_check_type is EC2")


def test_a_listener_forwarding_every_path_is_refused() -> None:
    def forward_by_default(props: dict) -> None:
        props["defaultActions"] = [{"type": "forward", "targetGroupArn": "arn:aws:lb:tg"}]

    only(
        edit(graph(), "endpoint-https", forward_by_default),
        "listener-forwards-no-default",
        "endpoint-https",
        "default action 0 forwards every path",
    )
    # The redirect from 80 and a 404 are fine; so is a value not known yet (a preview).
    for name in ("endpoint-http-redirect", "endpoint-https"):
        assert check_resource(next(r for r in graph() if r.name == name)) == []
    unknown = Resource(
        next(iter(rules.LISTENERS)), "l", UnknownAt({"defaultActions": []}, {"defaultActions"})
    )
    assert check_resource(unknown) == []


# --- buckets ---------------------------------------------------------------------------------------
def test_an_unencrypted_bucket_is_refused() -> None:
    resources = [r for r in graph() if r.type not in rules.BUCKET_ENCRYPTION]
    only(resources, "buckets-encrypted", "models-bucket", "no server-side encryption")
    resources = edit(graph(), "models-encryption", lambda p: p.update(rules=[{"bucketKeyEnabled": True}]))
    only(resources, "buckets-encrypted", "models-bucket", "no server-side encryption")
    # An encryption configuration of another bucket does not count.
    resources = edit(graph(), "models-encryption", lambda p: p.update(bucket="someone-elses-bucket"))
    only(resources, "buckets-encrypted", "models-bucket", "no server-side encryption")


def test_a_public_or_plain_http_bucket_is_refused() -> None:
    resources = edit(graph(), "models-public-access", lambda p: p.update(restrictPublicBuckets=False))
    only(resources, "buckets-private", "models-bucket", "no public access block")
    resources = edit(graph(), "models-tls-only", lambda p: p.update(policy=json.dumps({"Statement": []})))
    only(resources, "buckets-tls-only", "models-bucket", "denying requests without TLS")


# --- values not known during a preview -------------------------------------------------------------
class UnknownAt(Mapping):
    """Properties as the policy pack gives them in a preview: reading an unknown value raises."""

    def __init__(self, props: Mapping[str, Any], unknown: set[str]) -> None:
        self.props, self.unknown = props, unknown

    def __getitem__(self, key: str) -> Any:
        if key in self.unknown:
            raise RuntimeError(f"{key} can't be known during preview")
        return self.props[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.props)

    def __len__(self) -> int:
        return len(self.props)


def test_unknown_values_are_not_violations_and_known_ones_still_are() -> None:
    bucket = Resource(
        "aws:s3/bucket:Bucket",
        "b",
        UnknownAt({"id": 1, "bucket": 1, "arn": 1}, {"id", "bucket", "arn"}),
        urn="urn:b",
    )
    sse = Resource(
        next(iter(rules.BUCKET_ENCRYPTION)),
        "b-sse",
        UnknownAt(
            {"bucket": 1, "rules": [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "AES256"}}]},
            {"bucket"},
        ),
        dependencies=frozenset({"urn:b"}),
    )
    # The encryption refers to the bucket by dependency, its bucket ID being unknown yet.
    assert [v.policy for v in check_stack([bucket, sse])] == ["buckets-private", "buckets-tls-only"]
    template = Resource(
        rules.LAUNCH_TEMPLATE,
        "lt",
        UnknownAt({"metadataOptions": {}, "blockDeviceMappings": []}, {"metadataOptions"}),
    )
    assert check_resource(template) == []
    group = Resource(
        rules.GROUP,
        "asg",
        UnknownAt(
            {"vpcZoneIdentifiers": [], "healthCheckType": "EC2", "targetGroupArns": ["tg"]},
            {"vpcZoneIdentifiers"},
        ),
    )
    assert [v.policy for v in check_resource(group)] == ["group-health-from-load-balancer"]


# --- the policy pack's wrappers -----------------------------------------------------------------------
def test_the_pack_reports_what_the_rules_find_resource_by_resource() -> None:
    bad = edit(graph(), "gpu-lt", lambda p: p["metadataOptions"].update(httpTokens="optional"))
    bad.append(world_rule(22))
    for rule in rules.RESOURCE_RULES:
        validate = resource_validator(rule)
        for resource in bad:
            reported: list[str] = []
            args = SimpleNamespace(
                resource_type=resource.type, props=resource.props, name=resource.name, urn=resource.urn
            )
            validate(args, lambda message, urn=None, sink=reported: sink.append(message))
            expected = [v.message for v in check_resource(resource) if v.policy == rule.name]
            assert reported == expected
    assert any(v.policy == "imdsv2-required" for r in bad for v in check_resource(r))


def test_the_pack_reports_stack_violations_with_the_resource_urn() -> None:
    resources = [r for r in graph() if r.type not in rules.BUCKET_ENCRYPTION]
    by_urn = {r.urn: r for r in resources}
    policy_resources = [
        SimpleNamespace(resource_type=r.type, props=r.props, name=r.name, urn=r.urn, dependencies=[])
        for r in resources
    ]
    reported: list[tuple[str, str]] = []
    for rule in rules.STACK_RULES:
        stack_validator(rule)(
            SimpleNamespace(resources=policy_resources), lambda m, urn=None: reported.append((m, urn))
        )
    assert len(reported) == 1
    message, urn = reported[0]
    assert "no server-side encryption" in message
    assert by_urn[urn].name == "models-bucket"
