"""What the cloud program shares with the rest of the repository, in one place for the program and its
policy pack: the runtime's port is the model_runtime role's default (`model_runtime_base_port`), the
one the bare-metal hosts use, and its readiness route is the one the load balancer checks.

Both run from a checkout of this repository (both put its root on the import path), so they read the
role's own defaults file rather than a copy of its values. The policy pack's venv has no model_runtime
to import: the route is written here once for both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
RUNTIME_ROLE_DEFAULTS = REPO / "roles" / "model_runtime" / "defaults" / "main.yml"


def role_default(name: str, path: Path = RUNTIME_ROLE_DEFAULTS) -> Any:
    """A variable's default from a role's defaults file; a missing one is an error, not a guess."""
    defaults = yaml.safe_load(path.read_text()) or {}
    if name not in defaults:
        raise KeyError(f"{path}: no default for {name}, which infra/facts.py reads")
    return defaults[name]


RUNTIME_PORT: int = role_default("model_runtime_base_port")
# model_runtime/server/health.py: 200 only while the instance serves (not loading, draining or stalled).
READY_PATH = "/health/ready"
