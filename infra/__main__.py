"""The cloud fleet: `pulumi up` in infra/ (infra/README.md). This file reads the stack's configuration
and wires the components; what each one builds lives in components/."""

import sys
from pathlib import Path

# The program reads files of the repository (the schedule file, the boot script) and shares its modules
# with the tests as the `infra` package: the repository root goes on the import path.
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pulumi  # noqa: E402

from infra.components import (  # noqa: E402
    Endpoint,
    EndpointArgs,
    GpuFleet,
    GpuFleetArgs,
    ModelStore,
    ModelStoreArgs,
    Network,
    NetworkArgs,
)
from infra.config import load_stack_config  # noqa: E402

settings = load_stack_config(REPO)

network = Network(
    "network",
    NetworkArgs(
        cidr=settings.network.cidr,
        availability_zones=settings.network.availability_zones,
        nat=settings.network.nat,
        extra_endpoints=("secretsmanager",) if settings.api_keys.service == "secretsmanager" else (),
    ),
)
store = ModelStore(
    "models",
    ModelStoreArgs(
        bucket_name=settings.store.bucket_name,
        registry_prefix=settings.store.registry_prefix,
        bundle_prefix=settings.store.bundle_prefix,
        noncurrent_version_days=settings.store.noncurrent_version_days,
        kms_key_arn=settings.store.kms_key_arn,
        force_destroy=settings.store.force_destroy,
    ),
)
endpoint = Endpoint(
    "endpoint",
    EndpointArgs(
        vpc_id=network.vpc_id,
        public_subnet_ids=network.public_subnet_ids,
        runtime_port=settings.fleet.runtime_port,
        certificate_arn=settings.endpoint.certificate_arn,
        allow_http=settings.endpoint.allow_http,
        allowed_cidrs=settings.endpoint.allowed_cidrs,
        ssl_policy=settings.endpoint.ssl_policy,
        idle_timeout_s=settings.endpoint.idle_timeout_s,
        deregistration_delay_s=settings.deregistration_delay_s,
        domain_name=settings.endpoint.domain_name,
        deletion_protection=settings.endpoint.deletion_protection,
    ),
)
fleet = GpuFleet(
    "gpu",
    GpuFleetArgs(
        settings=settings,
        subnet_ids=network.private_subnet_ids,
        security_group_id=endpoint.instance_security_group_id,
        target_group_arn=endpoint.target_group_arn,
        request_count_label=endpoint.request_count_label,
        bucket_name=store.bucket_name,
        bucket_arn=store.bucket_arn,
    ),
)

schedule_file = settings.fleet.schedule_file.path
if schedule_file is not None:
    pulumi.log.info(
        f"{len(settings.fleet.scale_runs)} scheduled scale runs from {schedule_file}; not "
        f"scheduled: {', '.join(settings.fleet.skipped_schedules) or 'none'} (upgrades in the cloud are a "
        "configuration change, rolled out by an instance refresh)"
    )

# What operators (`python -m fleet_ops cloud ...`, `model-runtime registry --registry ...`) and Fabric need.
pulumi.export("endpointUrl", endpoint.url)
pulumi.export("loadBalancerDnsName", endpoint.dns_name)
pulumi.export("bucketName", store.bucket_name)
pulumi.export("registryUrl", store.registry_url)
pulumi.export("bundleUrl", store.bucket_name.apply(lambda b: f"s3://{b}/{settings.store.bundle_prefix}/"))
pulumi.export("autoscalingGroupName", fleet.group_name)
pulumi.export("launchTemplateId", fleet.launch_template_id)
pulumi.export("launchTemplateVersion", fleet.launch_template_version)
pulumi.export("instanceRoleName", fleet.role_name)
pulumi.export("instanceRoleArn", fleet.role_arn)
pulumi.export("vpcId", network.vpc_id)
pulumi.export("runtimeVersion", settings.runtime_version)
pulumi.export("model", settings.model)
