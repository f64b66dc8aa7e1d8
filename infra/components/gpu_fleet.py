"""GpuFleet: the GPU instances. A launch template (GPU AMI, IMDSv2, encrypted gp3, a role that reads
the artifact bucket and its API keys and speaks to SSM, nothing more; no public address, no SSH key
unless asked) whose user data boots each instance with the bare-metal roles; an auto scaling group
over the private subnets, on-demand base and spot above it, health from the load balancer, rolling
upgrades by instance refresh with automatic rollback; target tracking and scheduled scale runs.

A change of runtime or model in the stack's configuration changes the user data, hence a new launch
template version; the group refers to that exact version, and the change starts an instance refresh.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.config import ApiKeysRef, StackConfig
from infra.schedules import Schedule
from infra.userdata import boot_config, render_user_data


@dataclass
class GpuFleetArgs:
    settings: StackConfig
    subnet_ids: list[pulumi.Input[str]]
    security_group_id: pulumi.Input[str]
    target_group_arn: pulumi.Input[str]
    request_count_label: pulumi.Input[str]
    bucket_name: pulumi.Input[str]
    bucket_arn: pulumi.Input[str]


def _arn(partition: str, service: str, region: str, account: str, resource: str) -> str:
    return f"arn:{partition}:{service}:{region}:{account}:{resource}"


def instance_policy(
    *,
    bucket_arn: str,
    prefixes: tuple[str, ...],
    api_keys: ApiKeysRef,
    kms_keys: tuple[str, ...],
    partition: str,
    region: str,
    account: str,
) -> str:
    """The instance role's one policy: what booting and serving needs, nothing more."""
    if api_keys.service == "ssm":
        keys = {
            "Sid": "ReadApiKeys",
            "Effect": "Allow",
            "Action": "ssm:GetParameter",
            "Resource": _arn(partition, "ssm", region, account, f"parameter{api_keys.name}"),
        }
    else:
        secret = (
            api_keys.name
            if api_keys.name.startswith("arn:")
            # A secret's ARN ends in six random characters after its name.
            else _arn(partition, "secretsmanager", region, account, f"secret:{api_keys.name}-??????")
        )
        keys = {
            "Sid": "ReadApiKeys",
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": secret,
        }
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ReadModelsAndBundles",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": [f"{bucket_arn}/{p}/*" for p in prefixes],
        },
        # Listing makes a missing object answer 404 (the registry's "no such alias") rather than 403; the
        # bucket holds nothing but the registry and the bundles.
        {"Sid": "ListModelsAndBundles", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket_arn},
        keys,
        # Session Manager instead of SSH. Not AmazonSSMManagedInstanceCore: that managed policy also
        # grants ssm:GetParameter on every parameter of the account.
        {
            "Sid": "SessionManager",
            "Effect": "Allow",
            "Resource": "*",
            "Action": [
                "ssm:UpdateInstanceInformation",
                "ssmmessages:CreateControlChannel",
                "ssmmessages:CreateDataChannel",
                "ssmmessages:OpenControlChannel",
                "ssmmessages:OpenDataChannel",
                "ec2messages:AcknowledgeMessage",
                "ec2messages:DeleteMessage",
                "ec2messages:FailMessage",
                "ec2messages:GetEndpoint",
                "ec2messages:GetMessages",
                "ec2messages:SendReply",
            ],
        },
    ]
    if kms_keys:
        statements.append(
            {
                "Sid": "DecryptWithStackKeys",
                "Effect": "Allow",
                "Action": "kms:Decrypt",
                "Resource": list(kms_keys),
            }
        )
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


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
        settings, fleet = args.settings, args.settings.fleet
        identity = aws.get_caller_identity_output(opts=invoke)
        region = aws.get_region_output(opts=invoke).region
        partition = aws.get_partition_output(opts=invoke).partition

        role = aws.iam.Role(
            f"{name}-instance",
            description="model-runtime GPU instances: the artifact bucket, the API keys, SSM",
            assume_role_policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "ec2.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                }
            ),
            opts=child,
        )
        kms_keys = tuple(k for k in (settings.store.kms_key_arn, settings.api_keys_kms_key_arn) if k)
        aws.iam.RolePolicy(
            f"{name}-instance",
            role=role.id,
            policy=pulumi.Output.all(args.bucket_arn, partition, region, identity.account_id).apply(
                lambda v: instance_policy(
                    bucket_arn=v[0],
                    prefixes=(settings.store.registry_prefix, settings.store.bundle_prefix),
                    api_keys=settings.api_keys,
                    kms_keys=kms_keys,
                    partition=v[1],
                    region=v[2],
                    account=v[3],
                )
            ),
            opts=child,
        )
        profile = aws.iam.InstanceProfile(f"{name}-instance", role=role.name, opts=child)

        ami = self._ami(fleet.ami_id, fleet.ami_name, fleet.ami_owners, invoke)
        user_data = pulumi.Output.all(args.bucket_name, region).apply(
            lambda v: render_user_data(boot_config(settings, v[0], v[1]), fleet.boot_packages, settings.model)
        )
        template = aws.ec2.LaunchTemplate(
            f"{name}-lt",
            description=f"model-runtime {settings.runtime_version}, model {settings.model}",
            image_id=ami.id,
            update_default_version=True,
            key_name=fleet.key_name,
            iam_instance_profile={"arn": profile.arn},
            # IMDSv2 only; the hop limit keeps the credentials out of reach of anything behind a bridge.
            metadata_options={
                "http_endpoint": "enabled",
                "http_tokens": "required",
                "http_put_response_hop_limit": fleet.metadata_hop_limit,
                "instance_metadata_tags": "disabled",
            },
            network_interfaces=[
                {
                    "device_index": 0,
                    "associate_public_ip_address": "false",
                    "delete_on_termination": "true",
                    "security_groups": [args.security_group_id],
                }
            ],
            block_device_mappings=[
                {
                    "device_name": ami.root_device_name,
                    "ebs": {
                        "volume_size": fleet.volume_gib,
                        "volume_type": "gp3",
                        "encrypted": "true",
                        "delete_on_termination": "true",
                        "kms_key_id": settings.store.kms_key_arn,
                    },
                }
            ],
            user_data=user_data.apply(lambda text: base64.b64encode(text.encode()).decode()),
            monitoring={"enabled": True},
            tag_specifications=[
                {
                    "resource_type": kind,
                    "tags": {
                        "Name": name,
                        "model-runtime:version": settings.runtime_version,
                        "model-runtime:model": settings.model,
                    },
                }
                for kind in ("instance", "volume")
            ],
            opts=child,
        )

        refresh = fleet.refresh
        group = aws.autoscaling.Group(
            f"{name}-asg",
            vpc_zone_identifiers=args.subnet_ids,
            min_size=fleet.min_size,
            max_size=fleet.max_size,
            desired_capacity=fleet.desired_capacity,
            # The load balancer's /health/ready decides; the grace covers boot, install and model load.
            health_check_type="ELB",
            health_check_grace_period=fleet.health_check_grace_s,
            target_group_arns=[args.target_group_arn],
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
            # Target tracking, scheduled actions and `model-runtime cloud scale` move the desired capacity;
            # `pulumi up` must not put it back.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["desiredCapacity"]),
        )

        if fleet.target_requests_per_instance:
            aws.autoscaling.Policy(
                f"{name}-requests-per-instance",
                autoscaling_group_name=group.name,
                policy_type="TargetTrackingScaling",
                target_tracking_configuration={
                    "predefined_metric_specification": {
                        "predefined_metric_type": "ALBRequestCountPerTarget",
                        "resource_label": args.request_count_label,
                    },
                    "target_value": float(fleet.target_requests_per_instance),
                },
                opts=child,
            )
        for schedule in fleet.schedules:
            self._schedule(name, group, schedule, child)

        self.group_name = group.name
        self.launch_template_id = template.id
        self.launch_template_version = template.latest_version
        self.role_name = role.name
        self.role_arn = role.arn
        self.register_outputs(
            {
                "group_name": self.group_name,
                "launch_template_id": self.launch_template_id,
                "role_arn": self.role_arn,
            }
        )

    @staticmethod
    def _ami(
        ami_id: str | None, ami_name: str, owners: tuple[str, ...], invoke: pulumi.InvokeOptions
    ) -> pulumi.Output[Any]:
        """A pinned AMI (a refresh only when the stack changes it), or the newest matching the name."""
        filters = (
            [{"name": "image-id", "values": [ami_id]}]
            if ami_id
            else [
                {"name": "name", "values": [ami_name]},
                {"name": "architecture", "values": ["x86_64"]},
                {"name": "state", "values": ["available"]},
            ]
        )
        return aws.ec2.get_ami_output(most_recent=True, owners=list(owners), filters=filters, opts=invoke)

    @staticmethod
    def _schedule(
        name: str, group: aws.autoscaling.Group, schedule: Schedule, opts: pulumi.ResourceOptions
    ) -> None:
        aws.autoscaling.Schedule(
            f"{name}-{schedule.name}",
            autoscaling_group_name=group.name,
            scheduled_action_name=schedule.name,
            recurrence=schedule.cron,
            time_zone="Etc/UTC",
            desired_capacity=schedule.replicas,
            # -1: leave the bounds as the stack sets them (the provider's default would set them to 0).
            min_size=-1,
            max_size=-1,
            opts=opts,
        )
