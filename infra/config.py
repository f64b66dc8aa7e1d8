"""The stack's configuration (Pulumi.<stack>.yaml), typed and validated before any resource exists.

Every problem is reported with the key that holds it, as `pulumi config` spells it
(`model-runtime:fleet.maxSize: ...`), and an unknown key is an error rather than a silent default:
a typo in `minSize` must not ship a fleet of the wrong size. infra/README.md documents every key.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi

from infra.schedules import Schedule, ScheduleError, load_schedules, scale_actions
from model_runtime.config import ConfigError as RuntimeConfigError
from model_runtime.config import Settings as RuntimeSettings
from model_runtime.config import load_settings
from model_runtime.registry.registry import RegistryError, parse_ref

PROJECT = "model-runtime"
DEFAULT_SCHEDULES = "inventories/example/group_vars/all/schedules.yml"
# Amazon's GPU AMI with the NVIDIA driver baked in (the cloud path does not run the driver role).
DEFAULT_AMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04) *"
# The ALB's longest deregistration delay (its limit, in seconds).
ALB_MAX_DEREGISTRATION_DELAY_S = 3600
# Past the runtime's request deadline: the step that notices it and the response's last bytes.
DRAIN_GRACE_S = 30
REQUEST_TIMEOUT_KEY = "fleet.runtimeSettings.scheduler.request_timeout_s"
_MISSING = object()


class ConfigError(pulumi.RunError):
    """A bad stack setting: `pulumi up` stops with this message (no traceback), naming the key."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        super().__init__(f"{PROJECT}:{key}: {problem}")


@dataclass(frozen=True)
class ApiKeysRef:
    """Where the instances read their API keys at boot: never the keys themselves."""

    service: str  # ssm or secretsmanager
    name: str  # a parameter name (/a/b) or a secret's name or ARN


@dataclass(frozen=True)
class NetworkConfig:
    cidr: str
    availability_zones: int
    nat: str  # none, single, per-az


@dataclass(frozen=True)
class StoreConfig:
    bucket_name: str | None
    registry_prefix: str
    bundle_prefix: str
    noncurrent_version_days: int
    kms_key_arn: str | None
    force_destroy: bool


@dataclass(frozen=True)
class RefreshConfig:
    min_healthy_percentage: int
    max_healthy_percentage: int
    checkpoints: tuple[int, ...]
    checkpoint_delay_s: int
    instance_warmup_s: int


@dataclass(frozen=True)
class FleetConfig:
    instance_types: tuple[str, ...]
    ami_id: str | None
    ami_name: str
    ami_owners: tuple[str, ...]
    min_size: int
    max_size: int
    desired_capacity: int
    on_demand_base: int
    on_demand_percent_above_base: int
    spot_allocation_strategy: str
    system_volume_gib: int
    model_gib: int
    metadata_hop_limit: int
    key_name: str | None
    runtime_port: int
    health_check_grace_s: int
    target_requests_per_instance: int
    refresh: RefreshConfig
    schedules_file: Path | None
    schedules: tuple[Schedule, ...]  # the scale entries
    skipped_schedules: tuple[str, ...]  # the upgrade entries (a config change upgrades in the cloud)
    boot_packages: tuple[str, ...]
    torch_requirement: str | None
    # The longest request an instance serves, as its runtime reads it (runtimeSettings or its default).
    request_timeout_s: float
    runtime_settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def volume_gib(self) -> int:
        """The system's share plus room for two copies of the model: the one in use and a new version
        staged beside it (model_artifacts verifies a download before it switches)."""
        return self.system_volume_gib + 2 * self.model_gib

    @property
    def uses_spot(self) -> bool:
        return self.max_size > self.on_demand_base and self.on_demand_percent_above_base < 100


@dataclass(frozen=True)
class EndpointConfig:
    certificate_arn: str | None
    allow_http: bool
    allowed_cidrs: tuple[str, ...]
    ssl_policy: str
    idle_timeout_s: int
    deregistration_delay_s: int
    domain_name: str | None
    deletion_protection: bool

    @property
    def https(self) -> bool:
        return self.certificate_arn is not None


@dataclass(frozen=True)
class StackConfig:
    runtime_version: str
    runtime_bundle_sha256: str
    model: str
    api_keys: ApiKeysRef
    api_keys_kms_key_arn: str | None  # a customer-managed key of the SecureString or secret
    network: NetworkConfig
    store: StoreConfig
    fleet: FleetConfig
    endpoint: EndpointConfig


class _Section:
    """One object of the configuration; reads typed values and remembers which keys it used."""

    def __init__(self, key: str, raw: Any) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(key, f"must be an object of settings, got {type(raw).__name__}")
        self.key = key
        self.raw: dict[str, Any] = raw
        self.used: set[str] = set()

    def _key(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def _value(self, name: str, default: Any) -> Any:
        self.used.add(name)
        value = self.raw.get(name)
        if value is None or value == "":
            if default is _MISSING:
                raise ConfigError(self._key(name), "is required")
            return default
        return value

    def text(self, name: str, default: Any = _MISSING, pattern: str | None = None, hint: str = "") -> Any:
        value = self._value(name, default)
        if value is default:
            return value
        if not isinstance(value, str):
            raise ConfigError(self._key(name), f"must be a string, got {value!r}")
        if pattern and not re.fullmatch(pattern, value):
            raise ConfigError(self._key(name), f"{value!r} is not {hint or 'valid'}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.text(name, default)
        if value not in choices:
            raise ConfigError(self._key(name), f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def integer(
        self, name: str, default: Any = _MISSING, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = self._value(name, default)
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
            value = int(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self._key(name), f"must be a whole number, got {value!r}")
        if minimum is not None and value < minimum:
            raise ConfigError(self._key(name), f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ConfigError(self._key(name), f"must be at most {maximum}, got {value}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self._value(name, default)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(self._key(name), f"must be true or false, got {value!r}")
        return value

    def strings(self, name: str, default: tuple[str, ...], non_empty: bool = False) -> tuple[str, ...]:
        value = self._value(name, default)
        if value is default:
            items = default
        elif isinstance(value, list) and all(isinstance(v, str) and v for v in value):
            items = tuple(value)
        else:
            raise ConfigError(self._key(name), f"must be a list of strings, got {value!r}")
        if non_empty and not items:
            raise ConfigError(self._key(name), "must list at least one value")
        return items

    def integers(self, name: str, default: tuple[int, ...]) -> tuple[int, ...]:
        value = self._value(name, default)
        if value is default:
            return default
        if not isinstance(value, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and float(v).is_integer() for v in value
        ):
            raise ConfigError(self._key(name), f"must be a list of whole numbers, got {value!r}")
        return tuple(int(v) for v in value)

    def mapping(self, name: str) -> dict[str, Any]:
        value = self._value(name, {})
        if not isinstance(value, dict):
            raise ConfigError(self._key(name), f"must be an object, got {value!r}")
        return value

    def section(self, name: str) -> _Section:
        self.used.add(name)
        return _Section(self._key(name), self.raw.get(name))

    def finish(self) -> None:
        unknown = sorted(set(self.raw) - self.used)
        if unknown:
            raise ConfigError(
                self._key(unknown[0]), f"unknown setting (known here: {', '.join(sorted(self.used))})"
            )


def _json(key: str, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise ConfigError(key, f"must be an object, got {value!r}") from None


def _api_keys(root: _Section) -> ApiKeysRef:
    value = root.text("apiKeys")
    service, _, name = value.partition(":")
    if service not in ("ssm", "secretsmanager") or not name:
        raise ConfigError(
            "apiKeys",
            "must say where the keys are, ssm:/PARAMETER/NAME (a SecureString) or secretsmanager:NAME; "
            "the keys themselves never go into stack configuration or user data",
        )
    if service == "ssm" and not re.fullmatch(r"/[A-Za-z0-9_.\-/]+", name):
        raise ConfigError("apiKeys", f"{name!r} is not an SSM parameter name (/path/to/name)")
    if service == "secretsmanager" and not re.fullmatch(r"[A-Za-z0-9/_+=.@:\-]+", name):
        raise ConfigError("apiKeys", f"{name!r} is not a Secrets Manager name or ARN")
    return ApiKeysRef(service, name)


def _network(section: _Section) -> NetworkConfig:
    cidr = section.text("cidr", "10.40.0.0/16")
    try:
        network = ipaddress.ip_network(cidr)
    except ValueError:
        raise ConfigError("network.cidr", f"{cidr!r} is not an IPv4 network (e.g. 10.40.0.0/16)") from None
    if network.version != 4 or not 16 <= network.prefixlen <= 22:
        raise ConfigError("network.cidr", f"must be an IPv4 network from /16 to /22, got {cidr}")
    result = NetworkConfig(
        cidr=cidr,
        # One AZ is one failure away from no fleet: two is the floor.
        availability_zones=section.integer("availabilityZones", 2, minimum=2, maximum=6),
        nat=section.choice("nat", ("none", "single", "per-az"), "single"),
    )
    section.finish()
    return result


def _store(section: _Section) -> StoreConfig:
    result = StoreConfig(
        bucket_name=section.text(
            "bucketName", None, r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", "an S3 bucket name (a-z, 0-9, '.', '-')"
        ),
        registry_prefix=section.text(
            "registryPrefix", "registry", r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*", "a key prefix"
        ),
        bundle_prefix=section.text(
            "bundlePrefix", "bundles", r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*", "a key prefix"
        ),
        noncurrent_version_days=section.integer("noncurrentVersionDays", 30, minimum=1),
        kms_key_arn=section.text("kmsKeyArn", None, r"arn:aws[a-z-]*:kms:.+", "a KMS key ARN"),
        force_destroy=section.flag("forceDestroy", False),
    )
    section.finish()
    return result


def _refresh(section: _Section) -> RefreshConfig:
    checkpoints = section.integers("checkpoints", (50, 100))
    if any(not 1 <= c <= 100 for c in checkpoints) or list(checkpoints) != sorted(set(checkpoints)):
        raise ConfigError(
            "fleet.refresh.checkpoints", f"must be rising percentages from 1 to 100, got {list(checkpoints)}"
        )
    # Launch before terminate by default (max above 100): a one-instance stack keeps serving too.
    low = section.integer("minHealthyPercentage", 100, minimum=0, maximum=100)
    high = section.integer("maxHealthyPercentage", 150, minimum=100, maximum=200)
    if high - low > 100:
        raise ConfigError(
            "fleet.refresh.maxHealthyPercentage",
            f"may exceed fleet.refresh.minHealthyPercentage ({low}) by 100 at most, got {high}",
        )
    result = RefreshConfig(
        min_healthy_percentage=low,
        max_healthy_percentage=high,
        checkpoints=checkpoints,
        checkpoint_delay_s=section.integer("checkpointDelaySeconds", 300, minimum=0),
        instance_warmup_s=section.integer("instanceWarmupSeconds", 300, minimum=0),
    )
    section.finish()
    return result


def _fleet(section: _Section, repo: Path) -> FleetConfig:
    min_size = section.integer("minSize", 1, minimum=0)
    max_size = section.integer("maxSize", 2, minimum=1)
    if max_size < min_size:
        raise ConfigError("fleet.maxSize", f"must be at least fleet.minSize ({min_size}), got {max_size}")
    desired = section.integer("desiredCapacity", min_size)
    if not min_size <= desired <= max_size:
        raise ConfigError(
            "fleet.desiredCapacity",
            f"must be within fleet.minSize and fleet.maxSize ({min_size}..{max_size}), got {desired}",
        )
    schedules_path = section.text("schedules", DEFAULT_SCHEDULES)
    schedules: tuple[Schedule, ...] = ()
    skipped: tuple[str, ...] = ()
    schedules_file = None
    if schedules_path != "none":
        schedules_file = (repo / schedules_path).resolve()
        try:
            every = load_schedules(schedules_file)
            schedules = tuple(scale_actions(every, min_size, max_size, schedules_path))
        except ScheduleError as exc:
            raise ConfigError("fleet.schedules", str(exc)) from None
        skipped = tuple(s.name for s in every if s.kind != "scale")
    runtime_settings = section.mapping("runtimeSettings")
    runtime = _runtime_settings(runtime_settings)
    result = FleetConfig(
        instance_types=section.strings("instanceTypes", (), non_empty=True),
        ami_id=section.text("amiId", None, r"ami-[0-9a-f]{8,17}", "an AMI ID (ami-...)"),
        ami_name=section.text("amiName", DEFAULT_AMI_NAME),
        ami_owners=section.strings("amiOwners", ("amazon",), non_empty=True),
        min_size=min_size,
        max_size=max_size,
        desired_capacity=desired,
        on_demand_base=section.integer("onDemandBase", 0, minimum=0, maximum=max_size),
        on_demand_percent_above_base=section.integer("onDemandPercentAboveBase", 100, minimum=0, maximum=100),
        spot_allocation_strategy=section.choice(
            "spotAllocationStrategy",
            ("capacity-optimized", "price-capacity-optimized", "capacity-optimized-prioritized"),
            "capacity-optimized",
        ),
        system_volume_gib=section.integer("systemVolumeGiB", 100, minimum=30),
        model_gib=section.integer("modelGiB", 1, minimum=1),
        # 1 keeps the metadata service out of reach of containers; 2 lets one bridge hop through.
        metadata_hop_limit=section.integer("metadataHopLimit", 1, minimum=1, maximum=2),
        key_name=section.text("keyName", None),
        runtime_port=section.integer("runtimePort", 8101, minimum=1024, maximum=65535),
        health_check_grace_s=section.integer("healthCheckGraceSeconds", 900, minimum=0),
        target_requests_per_instance=section.integer("targetRequestsPerInstance", 0, minimum=0),
        refresh=_refresh(section.section("refresh")),
        schedules_file=schedules_file,
        schedules=schedules,
        skipped_schedules=skipped,
        boot_packages=section.strings("bootPackages", ("python3-boto3", "python3-venv")),
        torch_requirement=section.text("torchRequirement", None),
        runtime_settings=runtime_settings,
        request_timeout_s=runtime.scheduler.request_timeout_s,
    )
    for instance_type in result.instance_types:
        if not re.fullmatch(r"[a-z][a-z0-9-]*\.[a-z0-9]+", instance_type):
            raise ConfigError("fleet.instanceTypes", f"{instance_type!r} is not an EC2 instance type")
    section.finish()
    return result


# The roles set these from the stack (model, port, key file): a second source would disagree.
_ROLE_OWNED = {"model": ("path", "served_name", "version"), "server": ("host", "port", "api_keys_file")}


def _runtime_settings(settings: dict[str, Any]) -> RuntimeSettings:
    """Checked now by the runtime's own settings model, so that a typo fails `pulumi up`, not every
    instance's start after the rollout began; what the instances' runtime will read."""
    for section, keys in _ROLE_OWNED.items():
        values = settings.get(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"fleet.runtimeSettings.{section}", f"must be an object, got {values!r}")
        for key in keys:
            if key in values:
                raise ConfigError(
                    f"fleet.runtimeSettings.{section}.{key}",
                    "is set by the stack (model, fleet.runtimePort, apiKeys), not here",
                )
    model = {**settings.get("model", {}), "path": "/checked-at-boot"}
    try:
        return load_settings(overrides={**settings, "model": model}, environ={})
    except RuntimeConfigError as exc:
        detail = str(exc).split(":", 1)[-1].strip().replace("\n  ", "; ")
        raise ConfigError("fleet.runtimeSettings", detail) from None


def deregistration_delay(request_timeout_s: float) -> int:
    """How long the ALB lets an instance that leaves (scale-in, refresh) finish its requests: the
    longest request the runtime allows plus a grace, within the ALB's limit. A runtime limit beyond
    that limit is an error: a scale-in would cut requests the runtime still considers alive."""
    if request_timeout_s > ALB_MAX_DEREGISTRATION_DELAY_S:
        raise ConfigError(
            REQUEST_TIMEOUT_KEY,
            f"is {request_timeout_s:g} s, above the load balancer's longest deregistration delay "
            f"({ALB_MAX_DEREGISTRATION_DELAY_S} s): an instance leaving the group would have requests "
            f"cut; at most {ALB_MAX_DEREGISTRATION_DELAY_S}",
        )
    return min(math.ceil(request_timeout_s) + DRAIN_GRACE_S, ALB_MAX_DEREGISTRATION_DELAY_S)


def _endpoint(section: _Section, request_timeout_s: float) -> EndpointConfig:
    if section.raw.get("deregistrationDelaySeconds") is not None:
        raise ConfigError(
            "endpoint.deregistrationDelaySeconds",
            f"is derived from {REQUEST_TIMEOUT_KEY} (the longest request an instance may be serving "
            "when it leaves the group); set that instead",
        )
    certificate = section.text("certificateArn", None, r"arn:aws[a-z-]*:acm:.+", "an ACM certificate ARN")
    allow_http = section.flag("allowHttp", False)
    if certificate is None and not allow_http:
        raise ConfigError(
            "endpoint.certificateArn",
            "is required for HTTPS; to serve plain HTTP (a dev stack) say so with endpoint.allowHttp: true",
        )
    if certificate is not None and allow_http:
        raise ConfigError(
            "endpoint.allowHttp",
            "must be false when endpoint.certificateArn is set (HTTP redirects to HTTPS)",
        )
    cidrs = section.strings("allowedCidrs", ("0.0.0.0/0",), non_empty=True)
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr)
        except ValueError:
            raise ConfigError(
                "endpoint.allowedCidrs", f"{cidr!r} is not a network (e.g. 203.0.113.0/24)"
            ) from None
    result = EndpointConfig(
        certificate_arn=certificate,
        allow_http=allow_http,
        allowed_cidrs=cidrs,
        ssl_policy=section.text("sslPolicy", "ELBSecurityPolicy-TLS13-1-2-2021-06"),
        # Streams can run for minutes: the ALB's default of 60 s would cut them.
        idle_timeout_s=section.integer("idleTimeoutSeconds", 300, minimum=1, maximum=4000),
        deregistration_delay_s=deregistration_delay(request_timeout_s),
        domain_name=section.text("domainName", None),
        deletion_protection=section.flag("deletionProtection", False),
    )
    section.finish()
    return result


TOP_LEVEL = (
    "runtimeVersion",
    "runtimeBundleSha256",
    "model",
    "apiKeys",
    "apiKeysKmsKeyArn",
    "network",
    "store",
    "fleet",
    "endpoint",
)
_OBJECTS = ("network", "store", "fleet", "endpoint")


def parse_stack_config(values: Mapping[str, str | None], repo: Path) -> StackConfig:
    """values: the stack's `model-runtime:` keys (without the prefix), as Pulumi gives them (strings;
    objects as JSON)."""
    decoded = {key: _json(key, values.get(key)) if key in _OBJECTS else values.get(key) for key in TOP_LEVEL}
    unknown = sorted(set(values) - set(TOP_LEVEL))
    if unknown:
        raise ConfigError(unknown[0], f"unknown setting (known: {', '.join(TOP_LEVEL)})")
    root = _Section("", decoded)
    runtime_version = root.text(
        "runtimeVersion", pattern=r"[0-9]+(\.[0-9]+)*([a-z0-9.+-]*)", hint="a runtime release (e.g. 0.1.0)"
    )
    model = root.text("model")
    try:
        parse_ref(model)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*([@:][A-Za-z0-9._-]+)?", model):
            raise RegistryError(f"{model!r}: not a reference (NAME, NAME@ALIAS or NAME:VERSION)")
    except RegistryError as exc:
        raise ConfigError("model", f"{exc}: e.g. demo@stable or demo:20261128-101500.000000-a1b2c3") from None
    fleet = _fleet(root.section("fleet"), repo)
    if not decoded["runtimeBundleSha256"]:
        raise ConfigError(
            "runtimeBundleSha256",
            "is required: an instance boots only the bundle with this sha256; infra/bundle.py prints it "
            "(pulumi config set runtimeBundleSha256 <sha256>)",
        )
    return StackConfig(
        runtime_version=runtime_version,
        runtime_bundle_sha256=root.text(
            "runtimeBundleSha256", pattern=r"[0-9a-f]{64}", hint="a sha256 (64 hex digits)"
        ),
        model=model,
        api_keys=_api_keys(root),
        api_keys_kms_key_arn=root.text("apiKeysKmsKeyArn", None, r"arn:aws[a-z-]*:kms:.+", "a KMS key ARN"),
        network=_network(root.section("network")),
        store=_store(root.section("store")),
        fleet=fleet,
        endpoint=_endpoint(root.section("endpoint"), fleet.request_timeout_s),
    )


def load_stack_config(repo: Path) -> StackConfig:
    """The running stack's configuration (the program's one entry to pulumi.Config)."""
    config = pulumi.Config(PROJECT)
    values: dict[str, str | None] = {key: config.get(key) for key in TOP_LEVEL}
    # Unknown top-level keys of our namespace are typos: read the whole map to find them.
    from pulumi.runtime.config import CONFIG

    for full_key in CONFIG.get():
        namespace, _, key = full_key.partition(":")
        if namespace == PROJECT and key not in values:
            values[key] = CONFIG.get()[full_key]
    return parse_stack_config(values, repo)
