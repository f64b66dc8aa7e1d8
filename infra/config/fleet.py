"""The fleet's part of the stack's configuration (`fleet.*`): the instances, the group's sizes, its
instance refresh, the schedule file's scale runs and the runtime settings the instances start with."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, PlainValidator, ValidationInfo, field_validator, model_validator

from infra.config.errors import Problem
from infra.config.gpus import fewest_gpus
from infra.config.values import AmiId, InstanceTypes, Section, Strings, Whole, Wholes, one_of
from infra.facts import RUNTIME_PORT
from infra.schedules import Schedule, ScheduleError, load_schedules, scale_actions
from model_runtime.config import ConfigError as RuntimeConfigError
from model_runtime.config import Settings as RuntimeSettings
from model_runtime.config import load_settings

DEFAULT_SCHEDULES = "inventories/example/group_vars/all/schedules.yml"
# Amazon's GPU AMI with the NVIDIA driver baked in (the cloud path does not run the driver role).
DEFAULT_AMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04) *"
REQUEST_TIMEOUT_KEY = "runtimeSettings.scheduler.request_timeout_s"
# The ALB's longest deregistration delay (its limit, in seconds).
ALB_MAX_DEREGISTRATION_DELAY_S = 3600
# Past the runtime's request deadline: the step that notices it and the response's last bytes.
DRAIN_GRACE_S = 30
# The roles set these from the stack (model, port, key file): a second source would disagree.
ROLE_OWNED = {
    "model": ("path", "served_name", "version"),
    "server": ("host", "port", "api_keys_file"),
    "vllm": ("python",),  # the environment the role builds on the instance
}
# runtimeSettings.model keys that reach the instances as the role's variables (model_runtime_<key>):
# the engine and its parallel sizes are part of the release the role records and a rollback restores.
RELEASE_KEYS = ("engine", "tensor_parallel_size", "pipeline_parallel_size")


class RefreshConfig(Section):
    # Launch before terminate by default (max above 100): a one-instance stack keeps serving too.
    min_healthy_percentage: Whole = Field(100, ge=0, le=100)
    max_healthy_percentage: Whole = Field(150, ge=100, le=200)
    checkpoints: Wholes = (50, 100)
    checkpoint_delay_s: Whole = Field(300, ge=0, alias="checkpointDelaySeconds")
    instance_warmup_s: Whole = Field(300, ge=0, alias="instanceWarmupSeconds")

    @field_validator("checkpoints")
    @classmethod
    def _rising_percentages(cls, checkpoints: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 1 <= c <= 100 for c in checkpoints) or list(checkpoints) != sorted(set(checkpoints)):
            raise Problem(f"must be rising percentages from 1 to 100, got {list(checkpoints)}")
        return checkpoints

    @model_validator(mode="after")
    def _room_to_launch(self) -> RefreshConfig:
        if self.max_healthy_percentage - self.min_healthy_percentage > 100:
            raise Problem(
                f"may exceed minHealthyPercentage ({self.min_healthy_percentage}) by 100 "
                f"at most, got {self.max_healthy_percentage}",
                key="maxHealthyPercentage",
            )
        return self


@dataclass(frozen=True)
class ScheduleFile:
    """The fleet's schedule file as the stack names it, read (`none`: no scheduled scale runs)."""

    name: str  # as given, relative to the repository
    path: Path | None
    entries: tuple[Schedule, ...]


def _read_schedule_file(value: Any, info: ValidationInfo) -> ScheduleFile:
    if not isinstance(value, str):
        raise Problem(f"must be a string, got {value!r}")
    if value == "none":
        return ScheduleFile(value, None, ())
    repo: Path = (info.context or {})["repo"]
    path = (repo / value).resolve()
    try:
        return ScheduleFile(value, path, tuple(load_schedules(path)))
    except ScheduleError as exc:
        raise Problem(str(exc)) from None


def runtime_settings(settings: Mapping[str, Any]) -> RuntimeSettings:
    """The instances' runtime settings as their runtime will read them, checked now by its own model so
    that a typo fails `pulumi up`, not every instance's start after the rollout began."""
    model = {**settings.get("model", {}), "path": "/checked-at-boot"}
    vllm = {**settings.get("vllm", {}), "python": "/built-at-boot"}
    try:
        return load_settings(overrides={**settings, "model": model, "vllm": vllm}, environ={})
    except RuntimeConfigError as exc:
        raise Problem(str(exc).split(":", 1)[-1].strip().replace("\n  ", "; ")) from None


class FleetConfig(Section):
    instance_types: InstanceTypes = Field((), min_length=1, validate_default=True)
    ami_id: AmiId | None = None
    ami_name: str = DEFAULT_AMI_NAME
    ami_owners: Strings = Field(("amazon",), min_length=1)
    min_size: Whole = Field(1, ge=0)
    max_size: Whole = Field(2, ge=1)
    desired: Whole | None = Field(None, alias="desiredCapacity")
    on_demand_base: Whole = Field(0, ge=0)
    on_demand_percent_above_base: Whole = Field(100, ge=0, le=100)
    spot_allocation_strategy: Annotated[
        str, one_of("capacity-optimized", "price-capacity-optimized", "capacity-optimized-prioritized")
    ] = "capacity-optimized"
    system_volume_gib: Whole = Field(100, ge=30, alias="systemVolumeGiB")
    model_gib: Whole = Field(1, ge=1, alias="modelGiB")
    # 1 keeps the metadata service out of reach of containers; 2 lets one bridge hop through.
    metadata_hop_limit: Whole = Field(1, ge=1, le=2)
    key_name: str | None = None
    runtime_port: Whole = Field(RUNTIME_PORT, ge=1024, le=65535)
    health_check_grace_s: Whole = Field(900, ge=0, alias="healthCheckGraceSeconds")
    # Target tracking on the ALB's requests per instance: off (0) by default, an option beside the queue.
    target_requests_per_instance: Whole = Field(0, ge=0)
    # Target tracking on the sequences waiting per instance (CloudWatch, published by each instance's
    # cloud_metrics role): the signal that grows with long prompts as well as with many. 0: off.
    target_queue_per_instance: float = Field(2.0, ge=0)
    # Seconds between two data points each instance publishes.
    metrics_interval_s: Whole = Field(60, ge=10)
    refresh: RefreshConfig
    schedule_file: Annotated[ScheduleFile, PlainValidator(_read_schedule_file)] = Field(
        DEFAULT_SCHEDULES, alias="schedules", validate_default=True
    )
    boot_packages: Strings = ("python3-boto3", "python3-venv")
    torch_requirement: str | None = None
    vllm_requirement: str | None = None
    # As given: the role merges them over its own defaults on the instance.
    runtime_settings: dict[str, Any] = Field(default_factory=dict)

    @field_validator("runtime_settings")
    @classmethod
    def _checked_by_the_runtime(cls, settings: dict[str, Any]) -> dict[str, Any]:
        for section, keys in ROLE_OWNED.items():
            values = settings.get(section, {})
            if not isinstance(values, dict):
                raise Problem(f"must be an object, got {values!r}", key=section)
            for key in keys:
                if key in values:
                    raise Problem(
                        "is set by the stack (model, fleet.runtimePort, apiKeys, vLLM's environment)",
                        key=f"{section}.{key}",
                    )
        runtime_settings(settings)
        return settings

    @model_validator(mode="after")
    def _sizes_agree(self) -> FleetConfig:
        if self.max_size < self.min_size:
            raise Problem(f"must be at least minSize ({self.min_size}), got {self.max_size}", key="maxSize")
        if not self.min_size <= self.desired_capacity <= self.max_size:
            raise Problem(
                f"must be within minSize and maxSize ({self.min_size}..{self.max_size}), "
                f"got {self.desired_capacity}",
                key="desiredCapacity",
            )
        if self.on_demand_base > self.max_size:
            raise Problem(f"must be at most {self.max_size}, got {self.on_demand_base}", key="onDemandBase")
        needed, has = runtime_settings(self.runtime_settings).model.gpus, fewest_gpus(self.instance_types)
        if needed > has:
            raise Problem(
                f"model.tensor_parallel_size x pipeline_parallel_size is {needed}, but an instance of "
                f"instanceTypes may have {has} GPU(s); choose types with at least {needed}",
                key="runtimeSettings",
            )
        timeout = self.request_timeout_s
        if timeout > ALB_MAX_DEREGISTRATION_DELAY_S:
            # A scale-in would cut requests the runtime still considers alive.
            raise Problem(
                f"is {timeout:g} s, above the load balancer's longest deregistration delay "
                f"({ALB_MAX_DEREGISTRATION_DELAY_S} s): an instance leaving the group would have requests "
                f"cut; at most {ALB_MAX_DEREGISTRATION_DELAY_S}",
                key=REQUEST_TIMEOUT_KEY,
            )
        try:
            scale_actions(
                list(self.schedule_file.entries), self.min_size, self.max_size, self.schedule_file.name
            )
        except ScheduleError as exc:
            raise Problem(str(exc), key="schedules") from None
        return self

    @property
    def engine_vars(self) -> dict[str, Any]:
        """The role's variables for the engine: RELEASE_KEYS as given, and the GPUs each instance owns
        when the model is spread over several."""
        model = self.runtime_settings.get("model", {})
        engine: dict[str, Any] = {f"model_runtime_{key}": model[key] for key in RELEASE_KEYS if key in model}
        devices = runtime_settings(self.runtime_settings).model.gpus
        return {**engine, "model_runtime_gpus_per_instance": devices} if devices > 1 else engine

    @property
    def instance_settings(self) -> dict[str, Any]:
        """runtimeSettings less RELEASE_KEYS, which travel as the role's variables (engine_vars)."""
        model = {k: v for k, v in self.runtime_settings.get("model", {}).items() if k not in RELEASE_KEYS}
        return {**self.runtime_settings, "model": model}

    @property
    def desired_capacity(self) -> int:
        return self.min_size if self.desired is None else self.desired

    @property
    def scale_runs(self) -> tuple[Schedule, ...]:
        """The schedule file's scale entries: the group's scheduled actions."""
        return tuple(s for s in self.schedule_file.entries if s.kind == "scale")

    @property
    def skipped_schedules(self) -> tuple[str, ...]:
        """The upgrade entries: in the cloud an upgrade is a configuration change, not a schedule."""
        return tuple(s.name for s in self.schedule_file.entries if s.kind != "scale")

    @cached_property
    def request_timeout_s(self) -> float:
        """The longest request an instance serves, as its runtime will read it (runtimeSettings or the
        runtime's default)."""
        return runtime_settings(self.runtime_settings).scheduler.request_timeout_s

    @property
    def deregistration_delay_s(self) -> int:
        """How long the ALB lets an instance that leaves (scale-in, refresh) finish its requests: the
        longest request the runtime allows plus a grace, within the ALB's limit."""
        return min(math.ceil(self.request_timeout_s) + DRAIN_GRACE_S, ALB_MAX_DEREGISTRATION_DELAY_S)

    @property
    def volume_gib(self) -> int:
        """The system's share plus room for two copies of the model: the one in use and a new version
        staged beside it (model_artifacts verifies a download before it switches)."""
        return self.system_volume_gib + 2 * self.model_gib

    @property
    def uses_spot(self) -> bool:
        return self.max_size > self.on_demand_base and self.on_demand_percent_above_base < 100
