"""How the stack's models map onto resources, decided in one place: one model keeps the names and the
path of a one-model stack (the public load balancer forwards to its group); several models get a
group each, named by the model, behind the routing tier (infra/components/router.py)."""

from __future__ import annotations

import pulumi

from infra.config import StackConfig
from infra.config.models import ModelConfig

GPU_COMPONENT = "gpu"


def gpu_fleet_name(settings: StackConfig, model: ModelConfig) -> str:
    """The model's GpuFleet component (its resources' prefix): `gpu` alone, `gpu-NAME` among several."""
    return f"{GPU_COMPONENT}-{model.name}" if settings.routed else GPU_COMPONENT


def metrics_fleet(settings: StackConfig, model: ModelConfig) -> str:
    """The CloudWatch `Fleet` dimension the model's instances publish under and its group tracks:
    the project and stack, and the model among several (one group's queue is not another's)."""
    base = f"{pulumi.get_project()}-{pulumi.get_stack()}"
    return f"{base}-{model.name}" if settings.routed else base
