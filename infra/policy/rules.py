"""The fleet's guardrails, as plain functions over a resource's type and properties.

One implementation, two users: the unit tests run these over the resources the Pulumi program
registers under mocks, and the policy pack (infra/policy/__main__.py, `pulumi preview --policy-pack
infra/policy`) wraps each one for the Pulumi CLI. Properties are the engine's (camelCase, as Pulumi
sends them to providers and to policy packs). A value that cannot be known yet (a preview of a new
stack) is never reported as a violation: the checks run again, with the values, during the update.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from infra.facts import READY_PATH, RUNTIME_PORT

# Only the load balancer's listeners may be reachable from the internet. Every other port admits
# private address space only: a source network holding any other address is "world-open", whatever
# its spelling (0.0.0.0/0, 0.0.0.0/00, 0::/0, 0.0.0.0/1 + 128.0.0.0/1) or size (an office's /32
# too: admin access goes through Session Manager, not through a hole to one public address).
PUBLIC_PORTS = frozenset({80, 443})
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",  # RFC 1918
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",  # RFC 6598 shared space, which VPCs may use
        "fc00::/7",  # IPv6 unique local
    )
)
# Named in a violation's message. 9001: supervisord's own HTTP server, by its convention.
KNOWN_PORTS = {
    22: "SSH",
    3389: "RDP",
    5985: "WinRM",
    5986: "WinRM",
    RUNTIME_PORT: "the runtime",
    9001: "supervisord",
}

SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
SECURITY_GROUP_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
INSTANCE = "aws:ec2/instance:Instance"
VOLUME = "aws:ebs/volume:Volume"
GROUP = "aws:autoscaling/group:Group"
SUBNET = "aws:ec2/subnet:Subnet"
LISTENERS = frozenset({"aws:lb/listener:Listener", "aws:alb/listener:Listener"})
TARGET_GROUPS = frozenset({"aws:lb/targetGroup:TargetGroup", "aws:alb/targetGroup:TargetGroup"})
BUCKETS = frozenset({"aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2"})
BUCKET_ENCRYPTION = frozenset(
    {
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
        "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2",
    }
)
PUBLIC_ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"


class Unknown:
    """A value Pulumi cannot know yet (during a preview)."""

    def __repr__(self) -> str:
        return "<unknown>"


UNKNOWN = Unknown()


@dataclass(frozen=True)
class Resource:
    type: str
    name: str
    props: Mapping[str, Any]
    urn: str = ""
    dependencies: frozenset[str] = frozenset()  # URNs this resource depends on (from the policy pack)


@dataclass(frozen=True)
class Violation:
    policy: str
    resource: str
    message: str
    urn: str = ""

    def __str__(self) -> str:
        return f"{self.policy}: {self.resource}: {self.message}"


@dataclass(frozen=True)
class ResourceRule:
    name: str
    description: str
    types: frozenset[str]
    check: Callable[[Resource], Iterable[str]]


@dataclass(frozen=True)
class StackRule:
    name: str
    description: str
    check: Callable[[Sequence[Resource]], Iterable[tuple[Resource, str]]]
    types: frozenset[str] = field(default_factory=frozenset)


def get(value: Any, *path: str | int) -> Any:
    """value[path...], None when absent, UNKNOWN when not known yet. The policy pack's property
    proxy raises its own error on an unknown value: anything raised on access means unknown."""
    if value is UNKNOWN:
        return UNKNOWN
    for step in path:
        try:
            if isinstance(step, int):
                value = (
                    value[step]
                    if isinstance(value, Sequence) and not isinstance(value, str) and step < len(value)
                    else None
                )
            else:
                value = value.get(step) if isinstance(value, Mapping) else None
        except Exception:  # the pack's UnknownValueError, without importing pulumi_policy here
            return UNKNOWN
        if value is None or value is UNKNOWN:
            return value
    return value


def items(value: Any) -> list[Any]:
    """A list property as a list (absent or unknown: empty; an element not known yet: UNKNOWN)."""
    if not isinstance(value, Sequence) or isinstance(value, str):
        return []
    return [get(value, index) for index in range(len(value))]


def truthy(value: Any) -> bool | None:
    """Launch templates spell booleans as strings ("true"); None when absent or unknown."""
    if value is None or value is UNKNOWN:
        return None
    if isinstance(value, str):
        return value.lower() == "true"
    return bool(value)


def _number(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# --- world-open ports -----------------------------------------------------------------------------
def _describe_ports(protocol: str, low: int | None, high: int | None) -> str:
    if protocol in ("-1", "all") or low is None:
        return "every port"
    if low == high:
        label = KNOWN_PORTS.get(low)
        return f"port {low}" + (f" ({label})" if label else "")
    named = [f"{p} ({n})" for p, n in KNOWN_PORTS.items() if low <= p <= high]
    return f"ports {low}-{high}" + (f", including {', '.join(named)}" if named else "")


def _public_source(cidr: Any) -> str | None:
    """Why a rule's source reaches beyond private address space (None when it does not, or is not
    known yet). Containment, not spelling: the network as AWS reads it must lie inside a private one."""
    if cidr is None or cidr is UNKNOWN:
        return None
    try:
        network = ipaddress.ip_network(str(cidr).strip(), strict=False)
    except ValueError:
        return "not a network, so counted as public"
    if any(network.version == p.version and network.subnet_of(p) for p in PRIVATE_NETWORKS):
        return None
    return "holds public addresses" if str(network) == cidr else f"{network}, holds public addresses"


def _world_open(protocol: Any, low: Any, high: Any, cidrs: Iterable[Any]) -> Iterator[str]:
    protocol = str(protocol if protocol not in (None, UNKNOWN) else "tcp").lower()
    low_n, high_n = _number(low), _number(high)
    everything = protocol in ("-1", "all")
    if (
        not everything
        and low_n is not None
        and high_n is not None
        and set(range(low_n, high_n + 1)) <= PUBLIC_PORTS
    ):
        return
    for cidr in cidrs:
        public = _public_source(cidr)
        if public is None:
            continue
        yield (
            f"ingress from {cidr} ({public}) to "
            f"{_describe_ports(protocol, None if everything else low_n, high_n)}: only 80 and 443 (the load "
            "balancer's listeners) may be open beyond private networks"
        )


def no_world_open_ports(resource: Resource) -> Iterator[str]:
    props = resource.props
    if resource.type == SECURITY_GROUP:
        for rule in items(get(props, "ingress")):
            cidrs = items(get(rule, "cidrBlocks")) + items(get(rule, "ipv6CidrBlocks"))
            yield from _world_open(get(rule, "protocol"), get(rule, "fromPort"), get(rule, "toPort"), cidrs)
    elif resource.type == SECURITY_GROUP_RULE:
        if get(props, "type") == "ingress":
            cidrs = items(get(props, "cidrBlocks")) + items(get(props, "ipv6CidrBlocks"))
            yield from _world_open(
                get(props, "protocol"), get(props, "fromPort"), get(props, "toPort"), cidrs
            )
    elif resource.type == INGRESS_RULE:
        cidrs = [get(props, "cidrIpv4"), get(props, "cidrIpv6")]
        yield from _world_open(get(props, "ipProtocol"), get(props, "fromPort"), get(props, "toPort"), cidrs)


# --- instances ------------------------------------------------------------------------------------
def imdsv2_required(resource: Resource) -> Iterator[str]:
    options = get(resource.props, "metadataOptions")
    if options is UNKNOWN:
        return
    tokens = get(options, "httpTokens")
    if tokens is not UNKNOWN and tokens != "required":
        yield f"metadata_options.http_tokens is {tokens or 'not set'}, not required: IMDSv1 would answer"
    hops = get(options, "httpPutResponseHopLimit")
    if hops is not UNKNOWN and (_number(hops) is None or not 1 <= int(hops) <= 2):
        shown = hops if hops is not None else "not set"
        yield f"metadata_options.http_put_response_hop_limit is {shown}, not 1 or 2"


def _unencrypted(volume: Any) -> bool:
    encrypted = get(volume, "encrypted")
    return encrypted is not UNKNOWN and truthy(encrypted) is not True


def volumes_encrypted(resource: Resource) -> Iterator[str]:
    props = resource.props
    if resource.type == LAUNCH_TEMPLATE:
        for mapping in items(get(props, "blockDeviceMappings")):
            ebs = get(mapping, "ebs")
            if isinstance(ebs, Mapping) and _unencrypted(ebs):
                yield f"volume {get(mapping, 'deviceName')} is not encrypted"
    elif resource.type == INSTANCE:
        for volume in [get(props, "rootBlockDevice"), *items(get(props, "ebsBlockDevices"))]:
            if isinstance(volume, Mapping) and _unencrypted(volume):
                yield f"volume {get(volume, 'deviceName') or 'root'} is not encrypted"
    elif resource.type == VOLUME and _unencrypted(props):
        yield "the volume is not encrypted"


def no_public_instance_ip(resource: Resource) -> Iterator[str]:
    props = resource.props
    if resource.type == LAUNCH_TEMPLATE:
        for interface in items(get(props, "networkInterfaces")):
            if truthy(get(interface, "associatePublicIpAddress")):
                yield f"network interface {get(interface, 'deviceIndex')} asks for a public IP address"
    elif resource.type == INSTANCE and truthy(get(props, "associatePublicIpAddress")):
        yield "the instance asks for a public IP address"


# --- the group and the load balancer -----------------------------------------------------------
def group_spans_zones(resource: Resource) -> Iterator[str]:
    subnets = get(resource.props, "vpcZoneIdentifiers")
    zones = get(resource.props, "availabilityZones")
    if subnets is UNKNOWN or zones is UNKNOWN:
        return
    if len(items(subnets)) < 2 and len(items(zones)) < 2:
        yield "the group is in a single availability zone (or subnet): one zone's outage takes the fleet"


def group_health_from_load_balancer(resource: Resource) -> Iterator[str]:
    props = resource.props
    attached = items(get(props, "targetGroupArns")) or items(get(props, "trafficSources"))
    kind = get(props, "healthCheckType")
    if attached and kind is not UNKNOWN and kind != "ELB":
        yield (
            f"health_check_type is {kind or 'EC2 (the default)'}: a replica that stops answering "
            f"{READY_PATH} would never be replaced; use ELB"
        )


def health_check_on_ready(resource: Resource) -> Iterator[str]:
    check = get(resource.props, "healthCheck")
    if check is UNKNOWN:
        return
    if check is None or truthy(get(check, "enabled")) is False:
        yield f"the target group has no health check: it must check {READY_PATH}"
        return
    path = get(check, "path")
    if path is not UNKNOWN and path != READY_PATH:
        shown = path or "/ (the default)"
        yield f"the health check is on {shown}, not {READY_PATH} (liveness is not readiness)"


def listener_forwards_no_default(resource: Resource) -> Iterator[str]:
    """A listener whose default action forwards sends every path to the runtime (/metrics,
    /openapi.json, /admin...): the default answers 404, listener rules forward an allow-list."""
    actions = get(resource.props, "defaultActions")
    if actions is UNKNOWN:
        return
    for index, action in enumerate(items(actions)):
        if get(action, "type") == "forward":
            yield (
                f"default action {index} forwards every path to the targets: make the default a "
                "fixed-response 404 and forward an allow-list of paths with listener rules"
            )


def metrics_publishing_scoped(resource: Resource) -> Iterator[str]:
    """cloudwatch:PutMetricData has no resource to name: a grant of it must name the namespace (a
    cloudwatch:namespace condition), or the instances could write into any namespace, AWS/... alarms'
    inputs included."""
    policy = get(resource.props, "policy")
    if policy is UNKNOWN:
        return
    try:
        document = json.loads(policy) if isinstance(policy, str) else policy
    except ValueError:
        return
    for statement in items(get(document, "Statement")):
        action = get(statement, "Action")
        actions = [str(a).lower() for a in ([action] if isinstance(action, str) else items(action))]
        grants = any(a in ("cloudwatch:putmetricdata", "cloudwatch:*", "*") for a in actions)
        if get(statement, "Effect") != "Allow" or not grants:
            continue
        conditions = get(statement, "Condition") or {}
        scoped = any(
            isinstance(values, Mapping) and "cloudwatch:namespace" in values
            for operator, values in (conditions.items() if isinstance(conditions, Mapping) else ())
            if str(operator).startswith("StringEquals") or str(operator).startswith("StringLike")
        )
        if not scoped:
            yield (
                f"statement {get(statement, 'Sid') or '(no Sid)'} allows cloudwatch:PutMetricData without a "
                "cloudwatch:namespace condition: name the fleet's namespace"
            )


RESOURCE_RULES: tuple[ResourceRule, ...] = (
    ResourceRule(
        "no-world-open-admin-or-runtime-port",
        "No security group opens SSH, RDP, the runtime port or any port but 80/443 beyond private networks",
        frozenset({SECURITY_GROUP, SECURITY_GROUP_RULE, INGRESS_RULE}),
        no_world_open_ports,
    ),
    ResourceRule(
        "imdsv2-required",
        "Instances require IMDSv2 tokens, with a hop limit of 1 or 2",
        frozenset({LAUNCH_TEMPLATE, INSTANCE}),
        imdsv2_required,
    ),
    ResourceRule(
        "volumes-encrypted",
        "Every EBS volume is encrypted",
        frozenset({LAUNCH_TEMPLATE, INSTANCE, VOLUME}),
        volumes_encrypted,
    ),
    ResourceRule(
        "no-public-instance-ip",
        "GPU instances get no public IP address",
        frozenset({LAUNCH_TEMPLATE, INSTANCE}),
        no_public_instance_ip,
    ),
    ResourceRule(
        "group-spans-availability-zones",
        "Auto scaling groups span at least two availability zones",
        frozenset({GROUP}),
        group_spans_zones,
    ),
    ResourceRule(
        "group-health-from-load-balancer",
        "Groups behind a load balancer use its health checks",
        frozenset({GROUP}),
        group_health_from_load_balancer,
    ),
    ResourceRule(
        "health-check-on-ready",
        f"Target groups health-check {READY_PATH}",
        TARGET_GROUPS,
        health_check_on_ready,
    ),
    ResourceRule(
        "metrics-publishing-scoped",
        "Roles may publish CloudWatch metrics only into a named namespace",
        frozenset({ROLE_POLICY}),
        metrics_publishing_scoped,
    ),
    ResourceRule(
        "listener-forwards-no-default",
        "Load balancer listeners answer 404 by default and forward only the paths their rules allow",
        LISTENERS,
        listener_forwards_no_default,
    ),
)


# --- rules across resources ------------------------------------------------------------------------
def _refers_to(resource: Resource, target: Resource, prop: str) -> bool:
    """Whether resource's prop names target: by value (IDs and names, known after creation) or by
    dependency (known during a preview, from the policy pack)."""
    value = get(resource.props, prop)
    names = {get(target.props, key) for key in ("id", "bucket", "arn")} - {None, UNKNOWN}
    return value in names or (bool(target.urn) and target.urn in resource.dependencies)


def _buckets_with(
    resources: Sequence[Resource], types: frozenset[str], ok: Callable[[Resource], bool | None], problem: str
) -> Iterator[tuple[Resource, str]]:
    for bucket in (r for r in resources if r.type in BUCKETS):
        verdicts = [ok(r) for r in resources if r.type in types and _refers_to(r, bucket, "bucket")]
        if not any(v is not False for v in verdicts):
            yield bucket, problem


def _encryption_rule_ok(resource: Resource) -> bool | None:
    algorithms = [
        get(rule, "applyServerSideEncryptionByDefault", "sseAlgorithm")
        for rule in items(get(resource.props, "rules"))
    ]
    if UNKNOWN in algorithms:
        return None
    return any(a in ("AES256", "aws:kms", "aws:kms:dsse") for a in algorithms)


def buckets_encrypted(resources: Sequence[Resource]) -> Iterator[tuple[Resource, str]]:
    yield from _buckets_with(
        resources,
        BUCKET_ENCRYPTION,
        _encryption_rule_ok,
        "no server-side encryption configuration (AES256 or aws:kms) for this bucket",
    )


def _block_ok(resource: Resource) -> bool | None:
    flags = [
        get(resource.props, k)
        for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    ]
    return None if UNKNOWN in flags else all(truthy(f) is True for f in flags)


def buckets_private(resources: Sequence[Resource]) -> Iterator[tuple[Resource, str]]:
    yield from _buckets_with(
        resources,
        frozenset({PUBLIC_ACCESS_BLOCK}),
        _block_ok,
        "no public access block with all four settings on",
    )


def _tls_only_ok(resource: Resource) -> bool | None:
    policy = get(resource.props, "policy")
    if policy is UNKNOWN:
        return None
    try:
        document = json.loads(policy) if isinstance(policy, str) else policy
    except ValueError:
        return False
    for statement in items(get(document, "Statement")):
        condition = get(statement, "Condition", "Bool", "aws:SecureTransport")
        if get(statement, "Effect") == "Deny" and str(condition).lower() == "false":
            return True
    return False


def buckets_tls_only(resources: Sequence[Resource]) -> Iterator[tuple[Resource, str]]:
    yield from _buckets_with(
        resources,
        frozenset({BUCKET_POLICY}),
        _tls_only_ok,
        "no bucket policy denying requests without TLS (aws:SecureTransport false)",
    )


def group_in_private_subnets(resources: Sequence[Resource]) -> Iterator[tuple[Resource, str]]:
    """A group's subnets must not hand out public addresses, and must lie in two zones or more."""
    subnets = [r for r in resources if r.type == SUBNET]
    for group in (r for r in resources if r.type == GROUP):
        chosen = [s for s in subnets if _member(group, s)]
        for subnet in chosen:
            if truthy(get(subnet.props, "mapPublicIpOnLaunch")):
                yield (
                    group,
                    f"subnet {subnet.name} gives instances a public IP address (map_public_ip_on_launch)",
                )
        zones = {get(s.props, "availabilityZone") for s in chosen}
        # One subnet is group-spans-availability-zones' finding; several subnets in one zone are this one's.
        complete = len(chosen) == len(items(get(group.props, "vpcZoneIdentifiers")))
        if len(chosen) >= 2 and complete and UNKNOWN not in zones and len(zones) < 2:
            yield (
                group,
                f"all of the group's subnets are in one availability zone ({', '.join(map(str, zones))})",
            )


def _member(group: Resource, subnet: Resource) -> bool:
    ids = items(get(group.props, "vpcZoneIdentifiers"))
    return get(subnet.props, "id") in ids or (bool(subnet.urn) and subnet.urn in group.dependencies)


STACK_RULES: tuple[StackRule, ...] = (
    StackRule("buckets-encrypted", "Every bucket has default server-side encryption", buckets_encrypted),
    StackRule("buckets-private", "Every bucket blocks public access", buckets_private),
    StackRule("buckets-tls-only", "Every bucket refuses requests without TLS", buckets_tls_only),
    StackRule(
        "group-in-private-subnets",
        "Groups launch into private subnets of two zones or more",
        group_in_private_subnets,
    ),
)


def check_resource(resource: Resource) -> list[Violation]:
    return [
        Violation(rule.name, resource.name, message, resource.urn)
        for rule in RESOURCE_RULES
        if resource.type in rule.types
        for message in rule.check(resource)
    ]


def check_stack(resources: Sequence[Resource]) -> list[Violation]:
    """Every rule over a whole stack: each resource's own, then those across resources."""
    found = [v for resource in resources for v in check_resource(resource)]
    for rule in STACK_RULES:
        found += [Violation(rule.name, r.name, message, r.urn) for r, message in rule.check(resources)]
    return found
