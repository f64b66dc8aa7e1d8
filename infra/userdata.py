"""The launch template's user data: cloud-init that writes the boot script (infra/boot.py)
and its configuration, then runs it once on the instance's first boot.

The output is deterministic (sorted JSON, gzip without a timestamp): the launch template gets a new
version, and the group an instance refresh, only when something the instance runs really changed.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

from infra.config import StackConfig
from infra.config.models import ModelConfig
from infra.config.values import merged
from infra.metrics import FLEET_DIMENSION, METRICS_NAMESPACE

TEMPLATE = Path(__file__).parent / "templates" / "cloud-init.yaml.j2"
# Runs on the instance, not in this program: user data carries it there (gzip, base64).
BOOT_SCRIPT = Path(__file__).parent / "boot.py"
BOOT_SCRIPT_PATH = "/usr/local/lib/model-runtime/boot.py"
BOOT_CONFIG_PATH = "/etc/model-runtime/boot/boot.json"
SYSTEM_PYTHON = "/usr/bin/python3"
# EC2 refuses user data above 16 KB (before base64).
USER_DATA_LIMIT = 16 * 1024


def bundle_name(runtime_version: str) -> str:
    """The runtime bundle's object name (infra/bundle.py writes it, the boot script fetches it)."""
    return f"model-runtime-bundle-{runtime_version}.tar.gz"


def boot_script() -> bytes:
    return BOOT_SCRIPT.read_bytes()


def boot_config(
    settings: StackConfig, fleet: ModelConfig, bucket: str, region: str, fleet_name: str
) -> dict[str, Any]:
    """What boot.py needs to serve fleet's model: where the bundle and the keys are, and the roles'
    variables. Role variables not set here keep the playbook's cloud defaults
    (playbooks/cloud-instance.yml)."""
    listed = [model.name for model in settings.models if model.name != fleet.name] if settings.routed else []
    role_vars: dict[str, Any] = {
        "model_artifacts_registry": f"s3://{bucket}/{settings.store.registry_prefix}",
        "model_artifacts_ref": fleet.ref,
        "model_runtime_base_port": fleet.runtime_port,
        # The role's default settings, with the stack's on top (checked by the runtime's model). Behind
        # the routing tier, GET /v1/models reaches one group: its instances list the others' models too.
        "model_runtime_settings": merged(
            {"scheduler": {}, "logging": {"json": True}, "server": {"listed_models": listed}},
            fleet.instance_settings,
        ),
        **fleet.engine_vars,
        # The queue depth and time to first token to CloudWatch, which the group's target tracking reads.
        "cloud_metrics_enabled": True,
        "cloud_metrics_region": region,
        "cloud_metrics_namespace": METRICS_NAMESPACE,
        "cloud_metrics_dimensions": {FLEET_DIMENSION: fleet_name},
        "cloud_metrics_interval_s": fleet.metrics_interval_s,
    }
    if fleet.torch_requirement:
        role_vars["model_runtime_torch_requirement"] = fleet.torch_requirement
    if fleet.vllm_requirement:
        role_vars["model_runtime_vllm_requirement"] = fleet.vllm_requirement
    return {
        "region": region,
        "bucket": bucket,
        "bundle_key": f"{settings.store.bundle_prefix}/{bundle_name(settings.runtime_version)}",
        "bundle_sha256": settings.runtime_bundle_sha256,
        "runtime_version": settings.runtime_version,
        "api_keys": f"{settings.api_keys.service}:{settings.api_keys.name}",
        "prefix": "",
        "python": SYSTEM_PYTHON,
        "vars": role_vars,
    }


def render(template: Path, limit: int = USER_DATA_LIMIT, **values: Any) -> str:
    """A cloud-init template rendered (YAML, not HTML: values go in through tojson, never unescaped),
    within EC2's limit on user data."""
    environment = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        autoescape=False,  # noqa: S701
    )
    text = environment.from_string(template.read_text()).render(**values)
    size = len(text.encode())
    if size > limit:
        raise ValueError(f"user data is {size} bytes, above EC2's limit of {limit}")
    return text


def render_user_data(config: Mapping[str, Any], packages: Sequence[str], model: str) -> str:
    script = base64.b64encode(gzip.compress(boot_script(), compresslevel=9, mtime=0)).decode()
    return render(
        TEMPLATE,
        api_keys_ref=config["api_keys"],
        runtime_version=config["runtime_version"],
        model=model,
        packages=list(packages),
        boot_config_path=BOOT_CONFIG_PATH,
        boot_config_json=json.dumps(config, indent=2, sort_keys=True),
        boot_script_path=BOOT_SCRIPT_PATH,
        boot_script=script,
        python=config["python"],
    )
