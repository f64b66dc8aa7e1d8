"""The stack's configuration (Pulumi.<stack>.yaml), typed and validated before any resource exists.

Pydantic models, as the runtime's own settings (model_runtime/config.py): the fields are the keys as
`pulumi config` spells them (camelCase aliases), unknown keys are refused, so a typo in `minSize` stops
`pulumi up` instead of shipping a fleet of the wrong size, and every problem names the key that holds it
(errors.py). values.py reads the values; models.py, fleet.py and sections.py are the objects below
the top level.
infra/README.md documents every key.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime.config import CONFIG
from pydantic import Field, ValidationError, field_validator, model_validator

from infra.config.errors import PROJECT, config_error
from infra.config.models import ModelConfig, as_model_list, unique_names, where_written
from infra.config.sections import EndpointConfig, NetworkConfig, RouterConfig, StoreConfig
from infra.config.values import ApiKeysSource, KmsKeyArn, ModelRef, RuntimeRelease, Section, Sha256
from model_runtime.registry.trust import split_ref


class StackConfig(Section):
    runtime_version: RuntimeRelease = Field(
        description="the runtime release the instances run (the bundle's), e.g. 0.1.0"
    )
    runtime_bundle_sha256: Sha256 = Field(
        description="an instance boots only the bundle with this sha256; infra/bundle.py prints it "
        "(pulumi config set runtimeBundleSha256 <sha256>)"
    )
    # The one-model form; as_model_list makes it models' one entry.
    model: ModelRef | None = None
    models: tuple[ModelConfig, ...] = Field(
        min_length=1,
        description="the models served, each {name, ref, engine, and any fleet key for its own group}; "
        "or model (a registry reference, e.g. demo@stable) for one",
    )
    api_keys: ApiKeysSource = Field(
        description="where the instances read their API keys at boot, ssm:/PARAMETER/NAME or "
        "secretsmanager:NAME"
    )
    # A customer-managed key of the SecureString or secret.
    api_keys_kms_key_arn: KmsKeyArn | None = None
    network: NetworkConfig
    store: StoreConfig
    # What the models share, checked as part of each model (models' entries are merged over it).
    fleet: dict[str, Any] = Field(default_factory=dict)
    endpoint: EndpointConfig
    router: RouterConfig

    @model_validator(mode="before")
    @classmethod
    def _one_list_of_models(cls, raw: Any) -> Any:
        return as_model_list(raw) if isinstance(raw, dict) else raw

    @field_validator("models")
    @classmethod
    def _unique(cls, models: tuple[ModelConfig, ...]) -> tuple[ModelConfig, ...]:
        return unique_names(models)

    @property
    def routed(self) -> bool:
        """Whether requests go through the routing tier: with several models, the body's `model` picks
        the group, which the load balancer cannot read (docs/cloud.md, "Several models"). With one,
        the load balancer forwards to its group directly."""
        return len(self.models) > 1

    @property
    def pinned_versions(self) -> dict[str, list[str]]:
        """model name -> [version], for each model whose reference pins NAME:VERSION (instances boot
        from that version whatever the aliases do; `registry gc` must keep it)."""
        return {model.name: [version] for model in self.models if (version := split_ref(model.ref)[1])}

    @property
    def runtime_port(self) -> int:
        return self.models[0].runtime_port  # shared: SHARED_KEYS


def parse_stack_config(values: Mapping[str, Any], repo: Path) -> StackConfig:
    """values: the stack's `model-runtime:` keys (without the prefix), as Pulumi gives them (strings;
    objects as JSON). repo: where relative paths (the schedule file) start."""
    try:
        return StackConfig.model_validate(dict(values), context={"repo": repo})
    except ValidationError as exc:
        raise config_error(exc, StackConfig, where_written(values)) from None


def load_stack_config(repo: Path) -> StackConfig:
    """The running stack's configuration (the program's one entry to pulumi.Config)."""
    config = pulumi.Config(PROJECT)
    values: dict[str, Any] = {
        str(f.alias): config.get(str(f.alias)) for f in StackConfig.model_fields.values()
    }
    # Unknown keys of our namespace are typos: read the whole map to find them.
    for full_key, value in CONFIG.get().items():
        namespace, _, key = full_key.partition(":")
        if namespace == PROJECT:
            values.setdefault(key, value)
    return parse_stack_config(values, repo)
