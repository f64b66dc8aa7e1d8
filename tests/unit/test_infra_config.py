"""The stack configuration, through the real program under Pulumi's mocks: every bad value stops it
before any resource exists, with the key named as `pulumi config` spells it."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest

import model_runtime
from infra.config.errors import ConfigError
from tests.support.pulumi_mocks import run_program

# pulumi_aws warns, as it loads, about resource types this program does not use.
pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws")]


def refused(stack: str, overrides: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        run_program(stack, overrides)
    return caught.value


@pytest.mark.parametrize(
    ("stack", "overrides", "key", "says"),
    [
        ("dev", {"runtimeVersion": None}, "runtimeVersion", "is required"),
        ("dev", {"runtimeVersion": "latest"}, "runtimeVersion", "not a runtime release"),
        ("dev", {"runtimeBundleSha256": "abc123"}, "runtimeBundleSha256", "not a sha256"),
        # An instance boots only a bundle whose sha256 the stack pins: none pinned is no stack.
        ("dev", {"runtimeBundleSha256": None}, "runtimeBundleSha256", "infra/bundle.py prints it"),
        ("prod", {"runtimeBundleSha256": ""}, "runtimeBundleSha256", "is required"),
        ("dev", {"model": "demo@"}, "model", "not a reference"),
        ("dev", {"model": "demo:v1\nruncmd: [reboot]"}, "model", "not a reference"),
        ("dev", {"apiKeys": None}, "apiKeys", "is required"),
        ("dev", {"apiKeys": "sk-live-0123456789abcdef"}, "apiKeys", "never go into stack configuration"),
        ("dev", {"apiKeys": "ssm:api-keys"}, "apiKeys", "not an SSM parameter name"),
        ("dev", {"apiKeysKmsKeyArn": "alias/fleet"}, "apiKeysKmsKeyArn", "not a KMS key ARN"),
        ("dev", {"modle": "demo@stable"}, "modle", "unknown setting"),
        ("dev", {"network.cidr": "10.0.0.0/8"}, "network.cidr", "from /16 to /22"),
        ("dev", {"network.cidr": "not-a-network"}, "network.cidr", "is not an IPv4 network"),
        ("dev", {"network.availabilityZones": 1}, "network.availabilityZones", "at least 2"),
        ("dev", {"network.nat": "sometimes"}, "network.nat", "one of none, single, per-az"),
        ("dev", {"network.natGateways": 2}, "network.natGateways", "unknown setting"),
        ("dev", {"store.bucketName": "Models_Bucket"}, "store.bucketName", "not an S3 bucket name"),
        ("dev", {"store.noncurrentVersionDays": 0}, "store.noncurrentVersionDays", "at least 1"),
        ("dev", {"fleet.instanceTypes": []}, "fleet.instanceTypes", "at least one"),
        ("dev", {"fleet.instanceTypes": ["g5 xlarge"]}, "fleet.instanceTypes", "not an EC2 instance type"),
        ("dev", {"fleet.instanceTypes": ["m7i.large"]}, "fleet.instanceTypes", "not a GPU instance type"),
        (
            "dev",
            {"fleet.runtimeSettings": {"model": {"engine": "vllm", "tensor_parallel_size": 4}}},
            "fleet.runtimeSettings",
            "is 4, but an instance of instanceTypes may have 1 GPU(s)",
        ),
        (
            "dev",
            {"fleet.runtimeSettings": {"model": {"engine": "builtin", "tensor_parallel_size": 2}}},
            "fleet.runtimeSettings",
            "the builtin engine runs a model on one device",
        ),
        ("dev", {"fleet.minSize": 3}, "fleet.maxSize", "at least minSize (3)"),
        (
            "dev",
            {"fleet.desiredCapacity": 5},
            "fleet.desiredCapacity",
            "within minSize and maxSize",
        ),
        ("dev", {"fleet.maxSize": "two"}, "fleet.maxSize", "a whole number"),
        ("dev", {"fleet.minsize": 1}, "fleet.minsize", "unknown setting"),
        ("dev", {"fleet.onDemandPercentAboveBase": 101}, "fleet.onDemandPercentAboveBase", "at most 100"),
        ("dev", {"fleet.metadataHopLimit": 3}, "fleet.metadataHopLimit", "at most 2"),
        ("dev", {"fleet.amiId": "ubuntu-24.04"}, "fleet.amiId", "not an AMI ID"),
        ("dev", {"fleet.spotAllocationStrategy": "lowest-price"}, "fleet.spotAllocationStrategy", "one of"),
        ("dev", {"fleet.refresh.checkpoints": [50, 20]}, "fleet.refresh.checkpoints", "rising percentages"),
        (
            "dev",
            {"fleet.refresh.minHealthyPercentage": 40, "fleet.refresh.maxHealthyPercentage": 180},
            "fleet.refresh.maxHealthyPercentage",
            "by 100 at most",
        ),
        (
            "dev",
            {"fleet.schedules": "inventories/nowhere/schedules.yml"},
            "fleet.schedules",
            "cannot be read",
        ),
        (
            "dev",
            {"fleet.maxSize": 1},
            "fleet.schedules",
            "schedule weekday-mornings asks for 2 replicas, above the group's maximum fleet.maxSize (1)",
        ),
        (
            "prod",
            {"fleet.minSize": 2, "fleet.desiredCapacity": 2},
            "fleet.schedules",
            "schedule weekday-evenings asks for 1 replicas, below the group's minimum fleet.minSize (2)",
        ),
        (
            "dev",
            {"fleet.runtimeSettings": {"scheduler": {"max_queue": "lots"}}},
            "fleet.runtimeSettings",
            "scheduler.max_queue",
        ),
        (
            "dev",
            {"fleet.runtimeSettings": {"schedular": {}}},
            "fleet.runtimeSettings",
            "schedular: unknown key",
        ),
        (
            "dev",
            {"fleet.runtimeSettings": {"server": {"port": 9000}}},
            "fleet.runtimeSettings.server.port",
            "set by the stack",
        ),
        ("dev", {"endpoint.allowHttp": None}, "endpoint.certificateArn", "endpoint.allowHttp: true"),
        ("prod", {"endpoint.allowHttp": True}, "endpoint.allowHttp", "must be false"),
        (
            "prod",
            {"endpoint.certificateArn": "my-cert"},
            "endpoint.certificateArn",
            "not an ACM certificate ARN",
        ),
        ("dev", {"endpoint.allowedCidrs": ["everyone"]}, "endpoint.allowedCidrs", "not a network"),
        ("dev", {"endpoint.idleTimeoutSeconds": 0}, "endpoint.idleTimeoutSeconds", "at least 1"),
        # The deregistration delay follows the runtime's longest request: one source, not two.
        (
            "dev",
            {"endpoint.deregistrationDelaySeconds": 45},
            "endpoint.deregistrationDelaySeconds",
            "derived from fleet.runtimeSettings.scheduler.request_timeout_s",
        ),
        (
            "dev",
            {"fleet.runtimeSettings": {"scheduler": {"request_timeout_s": 3600.5}}},
            "fleet.runtimeSettings.scheduler.request_timeout_s",
            "above the load balancer's longest deregistration delay (3600 s)",
        ),
        ("dev", {"network": "big"}, "network", "must be an object"),
    ],
)
def test_a_bad_value_is_refused_naming_its_key(stack: str, overrides: dict, key: str, says: str) -> None:
    error = refused(stack, overrides)
    assert error.key == key
    assert str(error).startswith(f"model-runtime:{key}: ")
    assert says in str(error)


def test_a_config_error_ends_pulumi_cleanly() -> None:
    # RunError: the CLI prints the message, without the program's traceback.
    assert issubclass(ConfigError, pulumi.RunError)


@pytest.mark.parametrize("stack", ["dev", "prod", "multi"])
def test_the_example_stacks_are_valid(stack: str) -> None:
    run = run_program(stack)
    # The examples pin this repository's release: the bundle infra/bundle.py builds from it.
    assert run.outputs["runtimeVersion"] == model_runtime.__version__
