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
    ModelRouter,
    ModelRouterArgs,
    ModelStore,
    ModelStoreArgs,
    ModelTarget,
    Network,
    NetworkArgs,
)
from infra.config import load_stack_config  # noqa: E402
from infra.layout import gpu_fleet_name, metrics_fleet  # noqa: E402
from infra.routing import ROUTER_PORT  # noqa: E402

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
        pins=settings.pinned_versions,
        pin_holder=f"stack-{pulumi.get_project()}-{pulumi.get_stack()}",
    ),
)
# Several models: the public load balancer forwards to the routers, which pick the model's group
# (components/router.py); one model: straight to its group, as ever. layout.py names the groups.
endpoint = Endpoint(
    "endpoint",
    EndpointArgs(
        vpc_id=network.vpc_id,
        public_subnet_ids=network.public_subnet_ids,
        runtime_port=ROUTER_PORT if settings.routed else settings.runtime_port,
        certificate_arn=settings.endpoint.certificate_arn,
        allow_http=settings.endpoint.allow_http,
        allowed_cidrs=settings.endpoint.allowed_cidrs,
        ssl_policy=settings.endpoint.ssl_policy,
        idle_timeout_s=settings.endpoint.idle_timeout_s,
        # In flight through it: the longest request any model allows.
        deregistration_delay_s=max(m.deregistration_delay_s for m in settings.models),
        domain_name=settings.endpoint.domain_name,
        deletion_protection=settings.endpoint.deletion_protection,
        **(
            {"backend_description": "Routers: their port from the load balancer only"}
            if settings.routed
            else {}
        ),
    ),
)
if settings.routed:
    router = ModelRouter(
        "router",
        ModelRouterArgs(
            vpc_id=network.vpc_id,
            private_subnet_ids=network.private_subnet_ids,
            models=settings.models,
            router=settings.router,
            runtime_port=settings.runtime_port,
            router_security_group_id=endpoint.instance_security_group_id,
            router_target_group_arn=endpoint.target_group_arn,
            idle_timeout_s=settings.endpoint.idle_timeout_s,
        ),
    )
    targets, gpu_security_group = router.targets, router.instance_security_group_id
else:
    direct = ModelTarget(endpoint.target_group_arn, endpoint.request_count_label)
    targets, gpu_security_group = {settings.models[0].name: direct}, endpoint.instance_security_group_id

fleets = {
    model.name: GpuFleet(
        gpu_fleet_name(settings, model),
        GpuFleetArgs(
            settings=settings,
            model=model,
            metrics_fleet=metrics_fleet(settings, model),
            subnet_ids=network.private_subnet_ids,
            security_group_id=gpu_security_group,
            target_group_arn=targets[model.name].target_group_arn,
            request_count_label=targets[model.name].request_count_label,
            bucket_name=store.bucket_name,
            bucket_arn=store.bucket_arn,
        ),
    )
    for model in settings.models
}

for model in settings.models:
    schedule_file = model.schedule_file.path
    if schedule_file is not None:
        pulumi.log.info(
            f"{model.name}: {len(model.scale_runs)} scheduled scale runs from {schedule_file}; not "
            f"scheduled: {', '.join(model.skipped_schedules) or 'none'} (upgrades in the cloud are a "
            "configuration change, rolled out by an instance refresh)"
        )

# What operators (`python -m fleet_ops cloud ...`, `model-runtime registry --registry ...`) and Fabric need.
pulumi.export("endpointUrl", endpoint.url)
pulumi.export("loadBalancerDnsName", endpoint.dns_name)
pulumi.export("bucketName", store.bucket_name)
pulumi.export("registryUrl", store.registry_url)
pulumi.export("bundleUrl", store.bucket_name.apply(lambda b: f"s3://{b}/{settings.store.bundle_prefix}/"))
pulumi.export("autoscalingGroupNames", {name: fleet.group_name for name, fleet in fleets.items()})
pulumi.export("models", {model.name: model.ref for model in settings.models})
pulumi.export("vpcId", network.vpc_id)
pulumi.export("runtimeVersion", settings.runtime_version)
if settings.routed:
    pulumi.export("routerGroupName", router.group_name)
else:
    # One group: the names every one-model tool reads (fleet_ops' --group, the autoscaler's burst
    # group). With several there is no one group to name, and a tool must choose from the maps above.
    (fleet,) = fleets.values()
    pulumi.export("autoscalingGroupName", fleet.group_name)
    pulumi.export("launchTemplateId", fleet.launch_template_id)
    pulumi.export("launchTemplateVersion", fleet.launch_template_version)
    pulumi.export("instanceRoleName", fleet.role_name)
    pulumi.export("instanceRoleArn", fleet.role_arn)
    pulumi.export("model", settings.models[0].ref)
