"""ModelStore: the artifact bucket. It holds the model registry (model_runtime.registry's S3 layout,
under `registry/`) and the runtime bundles the instances boot from (under `bundles/`).

Versioned (an overwritten or deleted object can be recovered), encrypted at rest, closed to the
public, reachable over TLS only, and old non-current versions expire so versioning does not grow the
bill forever. The registry's own versions are immutable objects; its aliases are the objects that get
overwritten, and the ones whose history matters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from model_runtime.registry.registry import pin_key, pin_record


@dataclass
class ModelStoreArgs:
    bucket_name: str | None
    registry_prefix: str
    bundle_prefix: str
    noncurrent_version_days: int
    kms_key_arn: str | None = None
    force_destroy: bool = False
    # model name -> the versions the stack's instances boot from (pinned NAME:VERSION references), kept
    # from `registry gc` by a pin object of the stack's own (pin_holder), which goes with the stack.
    pins: dict[str, list[str]] = field(default_factory=dict)
    pin_holder: str = ""


def tls_only_policy(bucket_arn: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "DenyPlainHttp",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [bucket_arn, f"{bucket_arn}/*"],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                }
            ],
        }
    )


class ModelStore(pulumi.ComponentResource):
    bucket_name: pulumi.Output[str]
    bucket_arn: pulumi.Output[str]
    registry_url: pulumi.Output[str]

    def __init__(self, name: str, args: ModelStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("model-runtime:fleet:ModelStore", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        bucket = aws.s3.Bucket(
            f"{name}-bucket",
            bucket=args.bucket_name,
            force_destroy=args.force_destroy,
            tags={"Name": f"{name}-bucket"},
            opts=child,
        )
        aws.s3.BucketOwnershipControls(
            f"{name}-ownership",
            bucket=bucket.id,
            rule={"object_ownership": "BucketOwnerEnforced"},
            opts=child,
        )
        block = aws.s3.BucketPublicAccessBlock(
            f"{name}-public-access",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        aws.s3.BucketVersioning(
            f"{name}-versioning", bucket=bucket.id, versioning_configuration={"status": "Enabled"}, opts=child
        )
        default = (
            {"sse_algorithm": "aws:kms", "kms_master_key_id": args.kms_key_arn}
            if args.kms_key_arn
            else {"sse_algorithm": "AES256"}
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encryption",
            bucket=bucket.id,
            rules=[
                {
                    "apply_server_side_encryption_by_default": default,
                    "bucket_key_enabled": bool(args.kms_key_arn),
                }
            ],
            opts=child,
        )
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle",
            bucket=bucket.id,
            rules=[
                {
                    "id": "expire-noncurrent-versions",
                    "status": "Enabled",
                    "filter": {},
                    "noncurrent_version_expiration": {"noncurrent_days": args.noncurrent_version_days},
                },
                {
                    "id": "abort-incomplete-uploads",
                    "status": "Enabled",
                    "filter": {},
                    "abort_incomplete_multipart_upload": {"days_after_initiation": 7},
                },
            ],
            opts=child,
        )
        # After the public access block: a policy written first could be refused as "public".
        aws.s3.BucketPolicy(
            f"{name}-tls-only",
            bucket=bucket.id,
            policy=bucket.arn.apply(tls_only_policy),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[block]),
        )

        for model, versions in sorted(args.pins.items()):
            aws.s3.BucketObjectv2(
                f"{name}-pin-{model}",
                bucket=bucket.id,
                key=f"{args.registry_prefix}/{pin_key(model, args.pin_holder)}",
                content=json.dumps(pin_record(versions), indent=2),
                content_type="application/json",
                opts=child,
            )

        self.bucket_name = bucket.bucket
        self.bucket_arn = bucket.arn
        self.registry_prefix = args.registry_prefix
        self.bundle_prefix = args.bundle_prefix
        self.registry_url = bucket.bucket.apply(lambda b: f"s3://{b}/{args.registry_prefix}")
        self.register_outputs(
            {
                "bucket_name": self.bucket_name,
                "bucket_arn": self.bucket_arn,
                "registry_url": self.registry_url,
            }
        )
