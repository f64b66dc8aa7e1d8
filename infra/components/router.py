"""ModelRouter: how a request reaches its model's group when the stack serves several models.

The public ALB cannot read a body, and the OpenAI API names the model in the body. So the public ALB
forwards (its path allow-list unchanged) to a small group of CPU routers running HAProxy
(infra/routing.py), which read the body's `model`, answer an unknown one themselves, and pass the
request on with an `x-model-route: NAME` header to an internal ALB. That ALB has one listener rule per
model (the header and the API's paths) forwarding to the model's own target group, which the model's
GPU group registers into, health-checks and drains, as with one model. Who may talk to whom: the
routers from the public ALB only (the Endpoint's backend security group), the internal ALB from the
routers only, the GPU instances from the internal ALB only.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.components.endpoint import (
    FORWARDED_PATHS,
    fixed_response,
    group_rule,
    runtime_target_group,
    web_egress,
)
from infra.components.gpu_fleet_template import find_ami
from infra.config.models import ModelConfig
from infra.config.sections import RouterConfig
from infra.routing import ROUTE_HEADER, haproxy_config, router_user_data
from model_runtime.server.errors import APIError

INTERNAL_PORT = 80
# The internal ALB's own answer when no rule matches (a request that did not come through a router).
UNROUTED = APIError(404, "The model does not exist.", param="model", code="model_not_found")


@dataclass
class ModelTarget:
    """Where a model's GPU group registers, and the label of its requests-per-target metric."""

    target_group_arn: pulumi.Output[str]
    request_count_label: pulumi.Output[str]


@dataclass
class ModelRouterArgs:
    vpc_id: pulumi.Input[str]
    private_subnet_ids: list[pulumi.Input[str]]
    models: Sequence[ModelConfig]
    router: RouterConfig
    runtime_port: int
    # The Endpoint's backend security group (the routers'), and its target group (the routers register).
    router_security_group_id: pulumi.Input[str]
    router_target_group_arn: pulumi.Input[str]
    idle_timeout_s: int


class ModelRouter(pulumi.ComponentResource):
    targets: dict[str, ModelTarget]
    instance_security_group_id: pulumi.Output[str]
    group_name: pulumi.Output[str]

    def __init__(self, name: str, args: ModelRouterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("model-runtime:fleet:ModelRouter", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        lb_sg, gpu_sg = self._security_groups(name, args, child)

        balancer = aws.lb.LoadBalancer(
            f"{name}-alb",
            load_balancer_type="application",
            internal=True,
            subnets=args.private_subnet_ids,
            security_groups=[lb_sg.id],
            idle_timeout=args.idle_timeout_s,
            drop_invalid_header_fields=True,
            opts=child,
        )
        listener = aws.lb.Listener(
            f"{name}-http",
            load_balancer_arn=balancer.arn,
            port=INTERNAL_PORT,
            protocol="HTTP",
            default_actions=fixed_response(UNROUTED),
            opts=child,
        )
        self.targets = {}
        for index, model in enumerate(args.models):
            group = runtime_target_group(
                f"{name}-{model.name}", args.vpc_id, args.runtime_port, model.deregistration_delay_s, child
            )
            aws.lb.ListenerRule(
                f"{name}-{model.name}",
                listener_arn=listener.arn,
                priority=100 + index,
                conditions=[
                    {"http_header": {"http_header_name": ROUTE_HEADER, "values": [model.name]}},
                    {"path_pattern": {"values": list(FORWARDED_PATHS)}},
                ],
                actions=[{"type": "forward", "target_group_arn": group.arn}],
                opts=child,
            )
            label = pulumi.Output.concat(balancer.arn_suffix, "/", group.arn_suffix)
            self.targets[model.name] = ModelTarget(group.arn, label)

        routers = self._routers(name, args, balancer.dns_name, child)
        self.instance_security_group_id = gpu_sg.id
        self.group_name = routers.name
        self.register_outputs({"group_name": self.group_name, "internal_dns_name": balancer.dns_name})

    @staticmethod
    def _security_groups(
        name: str, args: ModelRouterArgs, child: pulumi.ResourceOptions
    ) -> tuple[aws.ec2.SecurityGroup, aws.ec2.SecurityGroup]:
        lb_sg = aws.ec2.SecurityGroup(
            f"{name}-lb",
            vpc_id=args.vpc_id,
            description="The internal load balancer: the routers in, the runtime port out",
            tags={"Name": f"{name}-lb"},
            opts=child,
        )
        gpu_sg = aws.ec2.SecurityGroup(
            f"{name}-gpu",
            vpc_id=args.vpc_id,
            description="GPU instances: the runtime port from the internal load balancer only",
            tags={"Name": f"{name}-gpu"},
            opts=child,
        )
        rules = (
            ("lb-from-routers", lb_sg.id, INTERNAL_PORT, args.router_security_group_id, "from the routers"),
            (
                "gpu-from-lb",
                gpu_sg.id,
                args.runtime_port,
                lb_sg.id,
                "the runtime port, from the internal ALB",
            ),
        )
        for rule, group_id, port, source, description in rules:
            group_rule(f"{name}-{rule}", group_id, port, source, description, child)
        group_rule(
            f"{name}-lb-to-gpu",
            lb_sg.id,
            args.runtime_port,
            gpu_sg.id,
            "to the runtime port",
            child,
            egress=True,
        )
        web_egress(f"{name}-gpu", gpu_sg.id, child)
        return lb_sg, gpu_sg

    @staticmethod
    def _routers(
        name: str, args: ModelRouterArgs, internal_dns: pulumi.Output[str], child: pulumi.ResourceOptions
    ) -> aws.autoscaling.Group:
        """The router group: HAProxy on small instances in the private subnets, behind the public ALB."""
        router, names = args.router, [m.name for m in args.models]
        # As long as the longest request any model allows, and its drain.
        timeout_s = max(m.deregistration_delay_s for m in args.models)
        user_data = internal_dns.apply(
            lambda dns: router_user_data(
                names,
                haproxy_config(names, dns, body_limit_kib=router.body_limit_kib, timeout_s=timeout_s),
            )
        )
        ami = find_ami(router, pulumi.InvokeOptions(parent=child.parent))
        template = aws.ec2.LaunchTemplate(
            f"{name}-lt",
            description=f"model-runtime router for {', '.join(names)}",
            image_id=ami.id,
            instance_type=router.instance_type,
            update_default_version=True,
            metadata_options={
                "http_endpoint": "enabled",
                "http_tokens": "required",
                "http_put_response_hop_limit": 1,
                "instance_metadata_tags": "disabled",
            },
            network_interfaces=[
                {
                    "device_index": 0,
                    "associate_public_ip_address": "false",
                    "delete_on_termination": "true",
                    "security_groups": [args.router_security_group_id],
                }
            ],
            block_device_mappings=[
                {
                    "device_name": ami.root_device_name,
                    "ebs": {
                        "volume_size": 16,
                        "volume_type": "gp3",
                        "encrypted": "true",
                        "delete_on_termination": "true",
                    },
                }
            ],
            user_data=user_data.apply(lambda text: base64.b64encode(text.encode()).decode()),
            tag_specifications=[
                {"resource_type": kind, "tags": {"Name": f"{name}-router"}} for kind in ("instance", "volume")
            ],
            opts=child,
        )
        group = aws.autoscaling.Group(
            f"{name}-asg",
            vpc_zone_identifiers=args.private_subnet_ids,
            min_size=router.min_size,
            max_size=router.max_size,
            desired_capacity=router.min_size,
            health_check_type="ELB",
            health_check_grace_period=300,
            target_group_arns=[args.router_target_group_arn],
            launch_template={"id": template.id, "version": template.latest_version.apply(str)},
            # A new model (a new configuration) rolls the routers, never fewer than all serving.
            instance_refresh={
                "strategy": "Rolling",
                "preferences": {
                    "min_healthy_percentage": 100,
                    "max_healthy_percentage": 200,
                    "auto_rollback": True,
                    "skip_matching": True,
                },
            },
            tags=[{"key": "Name", "value": f"{name}-router", "propagate_at_launch": True}],
            opts=pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(ignore_changes=["desiredCapacity"])
            ),
        )
        aws.autoscaling.Policy(
            f"{name}-cpu",
            autoscaling_group_name=group.name,
            policy_type="TargetTrackingScaling",
            target_tracking_configuration={
                "predefined_metric_specification": {"predefined_metric_type": "ASGAverageCPUUtilization"},
                "target_value": float(router.target_cpu_percent),
            },
            opts=child,
        )
        return group
