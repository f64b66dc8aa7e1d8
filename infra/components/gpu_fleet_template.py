"""The GPU instances' launch template: the GPU AMI, IMDSv2 only, an encrypted gp3 volume, no public
address, no SSH key unless asked, and user data that boots each instance with the bare-metal roles.

A change of runtime or model in the stack's configuration changes the user data, hence a new version
of the template; the group refers to that exact version, so the change starts an instance refresh.
"""

from __future__ import annotations

import base64
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.config import StackConfig
from infra.config.fleet import FleetConfig
from infra.config.models import ModelConfig
from infra.config.sections import RouterConfig
from infra.userdata import boot_config, render_user_data


def find_ami(fleet: FleetConfig | RouterConfig, invoke: pulumi.InvokeOptions) -> pulumi.Output[Any]:
    """A pinned AMI (a refresh only when the stack changes it), or the newest matching the name."""
    filters = (
        [{"name": "image-id", "values": [fleet.ami_id]}]
        if fleet.ami_id
        else [
            {"name": "name", "values": [fleet.ami_name]},
            {"name": "architecture", "values": ["x86_64"]},
            {"name": "state", "values": ["available"]},
        ]
    )
    return aws.ec2.get_ami_output(
        most_recent=True, owners=list(fleet.ami_owners), filters=filters, opts=invoke
    )


def launch_template(
    name: str,
    settings: StackConfig,
    fleet: ModelConfig,
    *,
    fleet_name: str,
    instance_profile_arn: pulumi.Input[str],
    security_group_id: pulumi.Input[str],
    bucket_name: pulumi.Input[str],
    region: pulumi.Input[str],
    opts: pulumi.ResourceOptions,
    invoke: pulumi.InvokeOptions,
) -> aws.ec2.LaunchTemplate:
    """The template of fleet's model, whose user data carries the boot script and its configuration
    (infra/userdata.py)."""
    ami = find_ami(fleet, invoke)
    user_data = pulumi.Output.all(bucket_name, region).apply(
        lambda v: render_user_data(
            boot_config(settings, fleet, v[0], v[1], fleet_name), fleet.boot_packages, fleet.ref
        )
    )
    return aws.ec2.LaunchTemplate(
        f"{name}-lt",
        description=f"model-runtime {settings.runtime_version}, model {fleet.ref}",
        image_id=ami.id,
        update_default_version=True,
        key_name=fleet.key_name,
        iam_instance_profile={"arn": instance_profile_arn},
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
                "security_groups": [security_group_id],
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
                    "model-runtime:model": fleet.ref,
                },
            }
            for kind in ("instance", "volume")
        ],
        opts=opts,
    )
