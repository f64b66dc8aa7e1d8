"""One ComponentResource per concern of the fleet, each with its Args class."""

from infra.components.endpoint import Endpoint, EndpointArgs
from infra.components.gpu_fleet import GpuFleet, GpuFleetArgs
from infra.components.model_store import ModelStore, ModelStoreArgs
from infra.components.network import Network, NetworkArgs
from infra.components.router import ModelRouter, ModelRouterArgs, ModelTarget

__all__ = [
    "Endpoint",
    "EndpointArgs",
    "GpuFleet",
    "GpuFleetArgs",
    "ModelRouter",
    "ModelRouterArgs",
    "ModelStore",
    "ModelStoreArgs",
    "ModelTarget",
    "Network",
    "NetworkArgs",
]
