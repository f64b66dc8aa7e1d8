"""The GPU instance types the fleet may use, with the GPUs each has: a model split across GPUs
(runtimeSettings' model.tensor_parallel_size x pipeline_parallel_size) must fit every type the group
may launch, which the stack checks before any instance exists."""

from __future__ import annotations

from collections.abc import Iterable

# NVIDIA instance families on x86 (what the AMI and the runtime's CUDA builds run on).
GPUS_PER_INSTANCE_TYPE: dict[str, int] = {
    **{f"{family}.{size}": 1 for family in ("g4dn", "g5", "g6", "g6e") for size in
       ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    **{f"{family}.12xlarge": 4 for family in ("g4dn", "g5", "g6", "g6e")},
    **{f"{family}.24xlarge": 4 for family in ("g5", "g6", "g6e")},
    **{f"{family}.48xlarge": 8 for family in ("g5", "g6", "g6e")},
    "g4dn.metal": 8,
    "p3.2xlarge": 1,
    "p3.8xlarge": 4,
    "p3.16xlarge": 8,
    "p4d.24xlarge": 8,
    "p4de.24xlarge": 8,
    "p5.48xlarge": 8,
    "p5e.48xlarge": 8,
    "p5en.48xlarge": 8,
}  # fmt: skip


def fewest_gpus(instance_types: Iterable[str]) -> int:
    """The GPUs the group can count on: the fewest of any type it may launch."""
    return min(GPUS_PER_INSTANCE_TYPE[t] for t in instance_types)
