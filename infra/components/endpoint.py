"""Endpoint: the application load balancer in front of the fleet, and who may talk to whom.

Clients reach the load balancer on 443 (and 80, which only redirects to 443), or on 80 alone when the
stack says plain HTTP explicitly. The serving listener forwards an allow-list of paths (the OpenAI API
under /v1/ and readiness); anything else, /metrics, /openapi.json, /docs and /admin among them, gets
the runtime's own 404 envelope from the load balancer and never reaches an instance. The instances
accept the runtime port from the load balancer's security group and from nothing else; nobody gets
SSH (Session Manager replaces it). The target group checks /health/ready, so an instance that loads,
drains or failed gets no traffic, and the auto scaling group replaces one that stays unhealthy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.facts import READY_PATH
from model_runtime.server.errors import APIError, path_not_found

# ALB path patterns: case-sensitive globs (`*` any characters, `?` one) over the path, never the query
# string. AWS does not say whether the ALB decodes %XX or resolves `..` first; it need not matter: the
# runtime routes the decoded path exactly, so /v1/../metrics and /v1/%2e%2e/metrics, if forwarded,
# get its 404 (tests/integration/test_cloud_alb_paths.py tries every reading).
FORWARDED_PATHS = ("/v1/*", READY_PATH)
NOT_FOUND = path_not_found()


def runtime_target_group(
    name: str, vpc_id: pulumi.Input[str], port: int, deregistration_delay_s: int, opts: pulumi.ResourceOptions
) -> aws.lb.TargetGroup:
    """Instances that serve the API on port, ready when READY_PATH answers 200."""
    return aws.lb.TargetGroup(
        name,
        vpc_id=vpc_id,
        port=port,
        protocol="HTTP",
        target_type="instance",
        # A generation costs the replica more than a request does: send to the least busy one.
        load_balancing_algorithm_type="least_outstanding_requests",
        # Long enough for the longest request an instance may be serving when the group removes it.
        deregistration_delay=deregistration_delay_s,
        health_check={
            "enabled": True,
            "path": READY_PATH,
            "protocol": "HTTP",
            "port": "traffic-port",
            "matcher": "200",
            "interval": 10,
            "timeout": 5,
            "healthy_threshold": 2,
            "unhealthy_threshold": 3,
        },
        opts=opts,
    )


def web_egress(name: str, security_group_id: pulumi.Input[str], opts: pulumi.ResourceOptions) -> None:
    """Out: HTTPS (S3, SSM, package mirrors through NAT) and HTTP (Ubuntu's mirrors on EC2)."""
    for port in (443, 80):
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-out-{port}",
            security_group_id=security_group_id,
            ip_protocol="tcp",
            from_port=port,
            to_port=port,
            cidr_ipv4="0.0.0.0/0",
            description=f"out on {port}",
            opts=opts,
        )


def group_rule(
    name: str,
    security_group_id: pulumi.Input[str],
    port: pulumi.Input[int],
    other_group_id: pulumi.Input[str],
    description: str,
    opts: pulumi.ResourceOptions,
    *,
    egress: bool = False,
) -> None:
    """One TCP port between two security groups: in from the other group, or (egress) out to it."""
    rule = aws.vpc.SecurityGroupEgressRule if egress else aws.vpc.SecurityGroupIngressRule
    rule(
        name,
        security_group_id=security_group_id,
        ip_protocol="tcp",
        from_port=port,
        to_port=port,
        referenced_security_group_id=other_group_id,
        description=description,
        opts=opts,
    )


def fixed_response(error: APIError) -> list[dict]:
    """A listener's answer of its own, in the runtime's error envelope."""
    return [
        {
            "type": "fixed-response",
            "fixed_response": {
                "content_type": "application/json",
                "message_body": json.dumps(error.body()),
                "status_code": str(error.status),
            },
        }
    ]


@dataclass
class EndpointArgs:
    vpc_id: pulumi.Input[str]
    public_subnet_ids: list[pulumi.Input[str]]
    # What the load balancer forwards to: the GPU instances (one model) or the routers (several).
    runtime_port: int
    certificate_arn: str | None
    allow_http: bool
    allowed_cidrs: tuple[str, ...]
    ssl_policy: str
    idle_timeout_s: int
    deregistration_delay_s: int
    domain_name: str | None = None
    deletion_protection: bool = False
    backend_description: str = "GPU instances: the runtime port from the load balancer only"


class Endpoint(pulumi.ComponentResource):
    url: pulumi.Output[str]
    dns_name: pulumi.Output[str]
    target_group_arn: pulumi.Output[str]
    instance_security_group_id: pulumi.Output[str]
    request_count_label: pulumi.Output[str]

    def __init__(self, name: str, args: EndpointArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("model-runtime:fleet:Endpoint", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        https = args.certificate_arn is not None
        listen_ports = (443, 80) if https else (80,)

        lb_sg = aws.ec2.SecurityGroup(
            f"{name}-lb",
            vpc_id=args.vpc_id,
            description="The load balancer: clients in, the runtime port out",
            tags={"Name": f"{name}-lb"},
            opts=child,
        )
        instance_sg = aws.ec2.SecurityGroup(
            f"{name}-instances",
            vpc_id=args.vpc_id,
            description=args.backend_description,
            tags={"Name": f"{name}-instances"},
            opts=child,
        )
        # Rules as their own resources: the two groups refer to each other.
        for port in listen_ports:
            for index, cidr in enumerate(args.allowed_cidrs):
                aws.vpc.SecurityGroupIngressRule(
                    f"{name}-lb-{port}-{index}",
                    security_group_id=lb_sg.id,
                    ip_protocol="tcp",
                    from_port=port,
                    to_port=port,
                    description=f"clients on {port}",
                    **({"cidr_ipv6": cidr} if ":" in cidr else {"cidr_ipv4": cidr}),
                    opts=child,
                )
        port = args.runtime_port
        group_rule(
            f"{name}-lb-to-instances",
            lb_sg.id,
            port,
            instance_sg.id,
            "to the runtime port",
            child,
            egress=True,
        )
        group_rule(
            f"{name}-instances-from-lb",
            instance_sg.id,
            port,
            lb_sg.id,
            "the runtime port, from the load balancer",
            child,
        )
        web_egress(f"{name}-instances", instance_sg.id, child)
        target_group = runtime_target_group(
            f"{name}-runtime", args.vpc_id, args.runtime_port, args.deregistration_delay_s, child
        )
        balancer = aws.lb.LoadBalancer(
            f"{name}-alb",
            load_balancer_type="application",
            internal=False,
            subnets=args.public_subnet_ids,
            security_groups=[lb_sg.id],
            idle_timeout=args.idle_timeout_s,
            drop_invalid_header_fields=True,
            enable_deletion_protection=args.deletion_protection,
            opts=child,
        )
        not_found = fixed_response(NOT_FOUND)
        if https:
            serving = aws.lb.Listener(
                f"{name}-https",
                load_balancer_arn=balancer.arn,
                port=443,
                protocol="HTTPS",
                ssl_policy=args.ssl_policy,
                certificate_arn=args.certificate_arn,
                default_actions=not_found,
                opts=child,
            )
            aws.lb.Listener(
                f"{name}-http-redirect",
                load_balancer_arn=balancer.arn,
                port=80,
                protocol="HTTP",
                default_actions=[
                    {
                        "type": "redirect",
                        "redirect": {"protocol": "HTTPS", "port": "443", "status_code": "HTTP_301"},
                    }
                ],
                opts=child,
            )
        else:
            serving = aws.lb.Listener(
                f"{name}-http",
                load_balancer_arn=balancer.arn,
                port=80,
                protocol="HTTP",
                default_actions=not_found,
                opts=child,
            )
        aws.lb.ListenerRule(
            f"{name}-forward-api",
            listener_arn=serving.arn,
            priority=100,
            conditions=[{"path_pattern": {"values": list(FORWARDED_PATHS)}}],
            actions=[{"type": "forward", "target_group_arn": target_group.arn}],
            opts=child,
        )

        scheme = "https" if https else "http"
        host = pulumi.Output.from_input(args.domain_name) if args.domain_name else balancer.dns_name
        self.url = host.apply(lambda h: f"{scheme}://{h}/v1")
        self.dns_name = balancer.dns_name
        self.target_group_arn = target_group.arn
        self.instance_security_group_id = instance_sg.id
        # The label of the ALBRequestCountPerTarget metric, for target tracking.
        self.request_count_label = pulumi.Output.concat(balancer.arn_suffix, "/", target_group.arn_suffix)
        self.register_outputs(
            {"url": self.url, "dns_name": self.dns_name, "target_group_arn": self.target_group_arn}
        )
