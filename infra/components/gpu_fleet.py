"""GpuFleet: the GPU instances. A launch template (gpu_fleet_template.py) under an instance role
(gpu_fleet_role.py); an auto scaling group over the private subnets, on-demand base and spot above it,
health from the load balancer, rolling upgrades by instance refresh with automatic rollback; target
tracking and scheduled scale runs (gpu_fleet_scaling.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.components.gpu_fleet_role import instance_role
from infra.components.gpu_fleet_scaling import (
    scheduled_scale_run,
    track_queue_per_instance,
    track_requests_per_instance,
)
from infra.components.gpu_fleet_template import launch_template
from infra.config import StackConfig
from infra.config.fleet import FleetConfig
from infra.config.models import ModelConfig


@dataclass
class GpuFleetArgs:
    settings: StackConfig
    model: ModelConfig  # the model this group serves, with its fleet settings
    # The instances' CloudWatch dimension (infra/layout.py): each group tracks its own queue.
    metrics_fleet: str
    subnet_ids: list[pulumi.Input[str]]
    security_group_id: pulumi.Input[str]
    target_group_arn: pulumi.Input[str]
    request_count_label: pulumi.Input[str]
    bucket_name: pulumi.Input[str]
    bucket_arn: pulumi.Input[str]


def auto_scaling_group(
    name: str,
    fleet: FleetConfig,
    template: aws.ec2.LaunchTemplate,
    subnet_ids: list[pulumi.Input[str]],
    target_group_arn: pulumi.Input[str],
    opts: pulumi.ResourceOptions,
) -> aws.autoscaling.Group:
    """The group over the private subnets, on the template's exact version, rolled by instance refresh."""
    refresh = fleet.refresh
    return aws.autoscaling.Group(
        f"{name}-asg",
        vpc_zone_identifiers=subnet_ids,
        min_size=fleet.min_size,
        max_size=fleet.max_size,
        desired_capacity=fleet.desired_capacity,
        # The load balancer's /health/ready decides; the grace covers boot, install and model load.
        health_check_type="ELB",
        health_check_grace_period=fleet.health_check_grace_s,
        target_group_arns=[target_group_arn],
        default_instance_warmup=refresh.instance_warmup_s,
        # Spot: replace an instance at elevated risk of interruption before it is taken.
        capacity_rebalance=fleet.uses_spot,
        mixed_instances_policy={
            "instances_distribution": {
                "on_demand_base_capacity": fleet.on_demand_base,
                "on_demand_percentage_above_base_capacity": fleet.on_demand_percent_above_base,
                "on_demand_allocation_strategy": "prioritized",
                "spot_allocation_strategy": fleet.spot_allocation_strategy,
            },
            "launch_template": {
                # The exact version, not $Latest: a refresh rolls to it, and a rollback back from it.
                "launch_template_specification": {
                    "launch_template_id": template.id,
                    "version": template.latest_version.apply(str),
                },
                "overrides": [{"instance_type": t} for t in fleet.instance_types],
            },
        },
        instance_refresh={
            "strategy": "Rolling",
            "preferences": {
                "min_healthy_percentage": refresh.min_healthy_percentage,
                "max_healthy_percentage": refresh.max_healthy_percentage,
                "checkpoint_percentages": list(refresh.checkpoints),
                "checkpoint_delay": str(refresh.checkpoint_delay_s),
                "instance_warmup": str(refresh.instance_warmup_s),
                # A replacement that never turns healthy stops the refresh and restores the
                # previous version.
                "auto_rollback": True,
                "skip_matching": True,
                "scale_in_protected_instances": "Refresh",
                "standby_instances": "Terminate",
            },
        },
        wait_for_capacity_timeout=f"{fleet.health_check_grace_s + 600}s",
        enabled_metrics=[
            "GroupDesiredCapacity",
            "GroupInServiceInstances",
            "GroupPendingInstances",
            "GroupTerminatingInstances",
            "GroupTotalInstances",
        ],
        tags=[{"key": "Name", "value": name, "propagate_at_launch": True}],
        # Target tracking, scheduled actions and `python -m fleet_ops cloud scale` move the desired capacity;
        # `pulumi up` must not put it back.
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(ignore_changes=["desiredCapacity"])),
    )


class GpuFleet(pulumi.ComponentResource):
    group_name: pulumi.Output[str]
    launch_template_id: pulumi.Output[str]
    launch_template_version: pulumi.Output[int]
    role_name: pulumi.Output[str]
    role_arn: pulumi.Output[str]

    def __init__(self, name: str, args: GpuFleetArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("model-runtime:fleet:GpuFleet", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOptions(parent=self)
        settings, fleet, fleet_name = args.settings, args.model, args.metrics_fleet
        region = aws.get_region_output(opts=invoke).region

        identity = instance_role(name, settings, args.bucket_arn, region, child, invoke)
        template = launch_template(
            name,
            settings,
            fleet,
            fleet_name=fleet_name,
            instance_profile_arn=identity.profile.arn,
            security_group_id=args.security_group_id,
            bucket_name=args.bucket_name,
            region=region,
            opts=child,
            invoke=invoke,
        )
        group = auto_scaling_group(name, fleet, template, args.subnet_ids, args.target_group_arn, child)
        if fleet.target_queue_per_instance:
            track_queue_per_instance(name, group, fleet_name, fleet.target_queue_per_instance, child)
        if fleet.target_requests_per_instance:
            track_requests_per_instance(
                name, group, args.request_count_label, fleet.target_requests_per_instance, child
            )
        for schedule in fleet.scale_runs:
            scheduled_scale_run(name, group, schedule, child)

        self.group_name = group.name
        self.launch_template_id = template.id
        self.launch_template_version = template.latest_version
        self.role_name = identity.role.name
        self.role_arn = identity.role.arn
        self.register_outputs(
            {
                "group_name": self.group_name,
                "launch_template_id": self.launch_template_id,
                "role_arn": self.role_arn,
            }
        )
