"""The GPU instances' identity: an IAM role with one inline policy (what booting and serving needs:
the artifact bucket's registry and bundles, the API keys, Session Manager, the stack's KMS keys) and the
instance profile the launch template names."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.config import StackConfig
from infra.config.values import ApiKeysRef
from infra.metrics import METRICS_NAMESPACE

ASSUME_ROLE_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
)


@dataclass
class InstanceRole:
    role: aws.iam.Role
    profile: aws.iam.InstanceProfile


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
        # The runtime's queue and time to first token (the cloud_metrics role), into the fleet's
        # namespace only: PutMetricData has no resource to scope, its namespace is the condition.
        {
            "Sid": "PublishFleetMetrics",
            "Effect": "Allow",
            "Action": "cloudwatch:PutMetricData",
            "Resource": "*",
            "Condition": {"StringEquals": {"cloudwatch:namespace": METRICS_NAMESPACE}},
        },
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


def instance_role(
    name: str,
    settings: StackConfig,
    bucket_arn: pulumi.Input[str],
    region: pulumi.Input[str],
    opts: pulumi.ResourceOptions,
    invoke: pulumi.InvokeOptions,
) -> InstanceRole:
    """The role, its policy (over the account, region and partition the stack runs in) and its profile."""
    identity = aws.get_caller_identity_output(opts=invoke)
    partition = aws.get_partition_output(opts=invoke).partition
    role = aws.iam.Role(
        f"{name}-instance",
        description="model-runtime GPU instances: the artifact bucket, the API keys, SSM, metrics",
        assume_role_policy=ASSUME_ROLE_POLICY,
        opts=opts,
    )
    kms_keys = tuple(k for k in (settings.store.kms_key_arn, settings.api_keys_kms_key_arn) if k)
    aws.iam.RolePolicy(
        f"{name}-instance",
        role=role.id,
        policy=pulumi.Output.all(bucket_arn, partition, region, identity.account_id).apply(
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
        opts=opts,
    )
    profile = aws.iam.InstanceProfile(f"{name}-instance", role=role.name, opts=opts)
    return InstanceRole(role, profile)
