"""The models a stack serves, each on a GPU group of its own: `models` (a list), or `model` with
`fleet.*` for the one-model stack.

`fleet.*` holds what the models share; a `models` entry may set any fleet key for its own group
(sizes, instance types, runtime settings, schedules...) besides its name, its registry reference and
its engine (short for runtimeSettings.model.engine). Both forms become one list of ModelConfig (the
entry merged over `fleet`), so the program has one path for one model and for several; an error is
named where the operator wrote the value (`models[1].maxSize`, `fleet.instanceTypes`, `model`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import Field, model_validator

from infra.config.errors import Problem
from infra.config.fleet import FleetConfig
from infra.config.values import ModelName, ModelRef, decoded, merged

# One security group rule and one target port serve every group: the stack's, not a model's.
SHARED_KEYS = ("runtimePort",)

Path = list[str | int]


def registry_name(ref: str) -> str:
    """The model's name in the registry: the reference before its alias or version."""
    return re.split("[@:]", ref, maxsplit=1)[0]


class ModelConfig(FleetConfig):
    """One served model: its group's fleet settings, its name and its registry reference."""

    name: ModelName
    ref: ModelRef = Field(description="the model's registry reference, e.g. demo@stable")
    engine: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _named_and_engine_in_settings(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        if raw.get("name") is None and isinstance(raw.get("ref"), str):
            raw = {**raw, "name": registry_name(raw["ref"])}
        if raw.get("engine") is not None:
            raw = merged(raw, {"runtimeSettings": {"model": {"engine": raw["engine"]}}})
        return raw

    @model_validator(mode="after")
    def _served_under_its_name(self) -> ModelConfig:
        # The instances serve a model under its registry name (the model_runtime role's served_name);
        # the router routes on the name clients send, so the two must be one.
        if self.name != registry_name(self.ref):
            raise Problem(
                f"is {self.name!r}, but the instances serve {self.ref!r} as {registry_name(self.ref)!r}: "
                "a model's name is its registry name (leave it out to take it from ref)",
                key="name",
            )
        return self


def unique_names(models: tuple[ModelConfig, ...]) -> tuple[ModelConfig, ...]:
    """Names are unique, case aside: the load balancer compares the routing header without case."""
    seen: dict[str, int] = {}
    for index, model in enumerate(models):
        first = seen.setdefault(model.name.casefold(), index)
        if first != index:
            raise Problem(f"{model.name!r} is already models[{first}]'s name", key=f"{index}.name")
    return models


def as_model_list(given: dict[str, Any]) -> dict[str, Any]:
    """The stack's values with `models` as the list of entries merged over `fleet` (from `model` when
    the stack says one model that way)."""
    fleet = decoded(given, "fleet", "an object")
    if fleet is None:
        fleet = {}
    if not isinstance(fleet, dict):
        raise Problem(f"must be an object, got {fleet!r}", key="fleet")
    entries = decoded(given, "models", "a list")
    if entries is not None and given.get("model") is not None:
        raise Problem("is for a one-model stack: list every model under models instead", key="model")
    if entries is None and isinstance(given.get("model"), str):
        entries = [{"ref": given["model"]}]
    if isinstance(entries, list):
        for index, entry in enumerate(entries):
            for key in SHARED_KEYS:
                if isinstance(entry, dict) and key in entry:
                    raise Problem(f"is the stack's: set fleet.{key}", key=f"models[{index}].{key}")
        entries = [merged(fleet, e) if isinstance(e, dict) else e for e in entries]
    return {**given, "fleet": fleet, "models": entries}


def where_written(given: Mapping[str, Any]) -> Callable[[Path], tuple[Path, str]]:
    """For an error's path under `models[i]`: the key the operator wrote the value at (the entry's own,
    `fleet.*` for a value it inherits, `model` for the one-model form's reference), and a note saying
    which model it was checked for."""
    try:
        entries = decoded(dict(given), "models", "a list")
    except Problem:  # the error being named is this one
        entries = None

    def origin(path: Path) -> tuple[Path, str]:
        if len(path) < 3 or path[0] != "models" or not isinstance(path[1], int):
            return path, ""
        index, key = path[1], path[2]
        if not isinstance(entries, list):  # the one-model form
            return (["model"] if key in ("name", "ref") else ["fleet", *path[2:]]), ""
        entry = entries[index] if index < len(entries) else {}
        own = isinstance(entry, dict) and (key in entry or (key == "runtimeSettings" and "engine" in entry))
        if own or key in ("name", "ref"):
            return path, ""
        return ["fleet", *path[2:]], f" (for models[{index}])"

    return origin
