"""The stack configuration's network (`network.*`), artifact store (`store.*`) and load balancer
(`endpoint.*`) objects."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from infra.config.errors import Problem
from infra.config.fleet import REQUEST_TIMEOUT_KEY
from infra.config.values import (
    AcmCertificateArn,
    AmiId,
    BucketName,
    Flag,
    KeyPrefix,
    KmsKeyArn,
    Networks,
    Section,
    Strings,
    VpcNetwork,
    Whole,
    matching,
    one_of,
)


class NetworkConfig(Section):
    cidr: VpcNetwork = "10.40.0.0/16"
    # One AZ is one failure away from no fleet: two is the floor.
    availability_zones: Whole = Field(2, ge=2, le=6)
    nat: Annotated[str, one_of("none", "single", "per-az")] = "single"


class StoreConfig(Section):
    bucket_name: BucketName | None = None
    registry_prefix: KeyPrefix = "registry"
    bundle_prefix: KeyPrefix = "bundles"
    noncurrent_version_days: Whole = Field(30, ge=1)
    kms_key_arn: KmsKeyArn | None = None
    force_destroy: Flag = False


class EndpointConfig(Section):
    certificate_arn: AcmCertificateArn | None = None
    allow_http: Flag = False
    allowed_cidrs: Networks = Field(("0.0.0.0/0",), min_length=1)
    ssl_policy: str = "ELBSecurityPolicy-TLS13-1-2-2021-06"
    # Streams can run for minutes: the ALB's default of 60 s would cut them.
    idle_timeout_s: Whole = Field(300, ge=1, le=4000, alias="idleTimeoutSeconds")
    domain_name: str | None = None
    deletion_protection: Flag = False

    @model_validator(mode="before")
    @classmethod
    def _no_deregistration_delay(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("deregistrationDelaySeconds") is not None:
            raise Problem(
                f"is derived from fleet.{REQUEST_TIMEOUT_KEY} (the longest request an instance may be "
                "serving when it leaves the group); set that instead",
                key="deregistrationDelaySeconds",
            )
        return raw

    @model_validator(mode="after")
    def _https_unless_said(self) -> EndpointConfig:
        if self.certificate_arn is None and not self.allow_http:
            raise Problem(
                "is required for HTTPS; to serve plain HTTP (a dev stack) say so with "
                "endpoint.allowHttp: true",
                key="certificateArn",
            )
        if self.certificate_arn is not None and self.allow_http:
            raise Problem(
                "must be false when endpoint.certificateArn is set (HTTP redirects to HTTPS)", key="allowHttp"
            )
        return self

    @property
    def https(self) -> bool:
        return self.certificate_arn is not None


class RouterConfig(Section):
    """The routing tier of a stack with several models (infra/components/router.py): small CPU
    instances running HAProxy, which reads the body's `model` and sends the request on to that model's
    group through an internal load balancer."""

    instance_type: Annotated[str, matching(r"[a-z][a-z0-9-]*\.[a-z0-9]+", "an EC2 instance type")] = (
        "t3.small"
    )
    ami_id: AmiId | None = None
    ami_name: str = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
    ami_owners: Strings = Field(("099720109477",), min_length=1)  # Canonical
    # Two: one router's loss (or its zone's) leaves the other serving.
    min_size: Whole = Field(2, ge=1)
    max_size: Whole = Field(4, ge=1)
    # The whole body must fit HAProxy's buffer for it to read `model`, wherever the client put it.
    body_limit_kib: Whole = Field(1024, ge=16, le=16384, alias="bodyLimitKiB")
    target_cpu_percent: Whole = Field(50, ge=10, le=90)

    @model_validator(mode="after")
    def _sizes_agree(self) -> RouterConfig:
        if self.max_size < self.min_size:
            raise Problem(f"must be at least minSize ({self.min_size}), got {self.max_size}", key="maxSize")
        return self
