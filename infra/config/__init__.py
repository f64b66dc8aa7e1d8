"""The stack's configuration (Pulumi.<stack>.yaml), typed and validated before any resource exists.

Pydantic models, as the runtime's own settings (model_runtime/config.py): the fields are the keys as
`pulumi config` spells them (camelCase aliases), unknown keys are refused, so a typo in `minSize` stops
`pulumi up` instead of shipping a fleet of the wrong size, and every problem names the key that holds it
(errors.py). values.py reads the values; fleet.py and sections.py are the objects below the top level.
infra/README.md documents every key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime.config import CONFIG
from pydantic import Field, ValidationError, model_validator

from infra.config.errors import PROJECT, Problem, config_error
from infra.config.fleet import REQUEST_TIMEOUT_KEY, FleetConfig
from infra.config.sections import EndpointConfig, NetworkConfig, StoreConfig
from infra.config.values import ApiKeysSource, KmsKeyArn, ModelRef, RuntimeRelease, Section, Sha256

# The ALB's longest deregistration delay (its limit, in seconds).
ALB_MAX_DEREGISTRATION_DELAY_S = 3600
# Past the runtime's request deadline: the step that notices it and the response's last bytes.
DRAIN_GRACE_S = 30


class StackConfig(Section):
    runtime_version: RuntimeRelease = Field(
        description="the runtime release the instances run (the bundle's), e.g. 0.1.0"
    )
    runtime_bundle_sha256: Sha256 = Field(
        description="an instance boots only the bundle with this sha256; infra/bundle.py prints it "
        "(pulumi config set runtimeBundleSha256 <sha256>)"
    )
    model: ModelRef = Field(description="the model's registry reference, e.g. demo@stable")
    api_keys: ApiKeysSource = Field(
        description="where the instances read their API keys at boot, ssm:/PARAMETER/NAME or "
        "secretsmanager:NAME"
    )
    # A customer-managed key of the SecureString or secret.
    api_keys_kms_key_arn: KmsKeyArn | None = None
    network: NetworkConfig
    store: StoreConfig
    fleet: FleetConfig
    endpoint: EndpointConfig

    @model_validator(mode="after")
    def _requests_end_before_the_drain(self) -> StackConfig:
        """A runtime limit beyond the ALB's longest deregistration delay: a scale-in would cut requests
        the runtime still considers alive."""
        timeout = self.fleet.request_timeout_s
        if timeout > ALB_MAX_DEREGISTRATION_DELAY_S:
            raise Problem(
                f"is {timeout:g} s, above the load balancer's longest deregistration delay "
                f"({ALB_MAX_DEREGISTRATION_DELAY_S} s): an instance leaving the group would have requests "
                f"cut; at most {ALB_MAX_DEREGISTRATION_DELAY_S}",
                key=REQUEST_TIMEOUT_KEY,
            )
        return self

    @property
    def deregistration_delay_s(self) -> int:
        """How long the ALB lets an instance that leaves (scale-in, refresh) finish its requests: the
        longest request the runtime allows plus a grace, within the ALB's limit."""
        return min(math.ceil(self.fleet.request_timeout_s) + DRAIN_GRACE_S, ALB_MAX_DEREGISTRATION_DELAY_S)


def parse_stack_config(values: Mapping[str, Any], repo: Path) -> StackConfig:
    """values: the stack's `model-runtime:` keys (without the prefix), as Pulumi gives them (strings;
    objects as JSON). repo: where relative paths (the schedule file) start."""
    try:
        return StackConfig.model_validate(dict(values), context={"repo": repo})
    except ValidationError as exc:
        raise config_error(exc, StackConfig) from None


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
