"""`ensemble.json`: what an ensemble artifact is, read by the HTTP process and the engine process alike
(torch-free).

An ensemble folder holds this spec, the members' shared tokenizer (so the HTTP process tokenizes without
loading any member), a stacker's weights when the method is `stack`, and embedded members if any.
A member's `source` is either a pinned registry reference `registry:NAME:VERSION` (an alias is
refused: an ensemble version must name exact members, so that it, and a rollback to it, is exact) or a
path inside the ensemble folder (an embedded member, for artifacts that travel without a registry).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from model_runtime.engine.base import ModelLoadError
from model_runtime.registry.registry import RegistryError, parse_ref
from model_runtime.registry.resolve import PREFIX as REGISTRY_PREFIX
from model_runtime.registry.trust import NAME_PATTERN, path_problem

SPEC_FILE = "ensemble.json"
FORMAT: Final = "model-runtime-ensemble/1"
STACKER_FILE = "stacker.safetensors"

Method = Literal["average", "stack", "vote"]
Combine = Literal["probabilities", "logprobs"]


class MemberSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    source: str = Field(description="registry:NAME:VERSION, or a path inside the ensemble folder")

    @field_validator("source")
    @classmethod
    def _pinned_or_inside(cls, source: str) -> str:
        if source.startswith(REGISTRY_PREFIX):
            try:
                _, version, _ = parse_ref(source.removeprefix(REGISTRY_PREFIX))
            except RegistryError as exc:
                raise ValueError(str(exc)) from None
            if version is None:
                raise ValueError(
                    f"{source}: a member must be pinned to a version (registry:NAME:VERSION), not an "
                    "alias, so that an ensemble version names exact members"
                )
            return source
        problem = path_problem(source, "source")
        if problem:
            raise ValueError(f"{problem}: a member path must lie inside the ensemble folder")
        return source

    @property
    def registry_ref(self) -> str | None:
        return self.source if self.source.startswith(REGISTRY_PREFIX) else None


class EnsembleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["model-runtime-ensemble/1"] = FORMAT
    method: Method = Field(
        description="average: one distribution from the members' (combine); stack: the same, weighted per "
        "token by the stacker; vote: each member answers, the weighted majority wins"
    )
    combine: Combine = Field(
        default="probabilities",
        description="average: weighted mean of probabilities, or of log-probabilities (renormalised)",
    )
    members: tuple[MemberSpec, ...] = Field(min_length=2)
    weights: tuple[float, ...] = Field(
        description="one per member, in member order (stack: the stacker's mean weights on the data it was "
        "fitted on, for the record; the stacker weighs each token)"
    )
    stacker: str | None = Field(default=None, description="the stacker's weights file (method stack)")
    record: dict[str, Any] = Field(default_factory=dict, description="how the ensemble was chosen")

    @model_validator(mode="after")
    def _consistent(self) -> EnsembleSpec:
        if len(self.weights) != len(self.members):
            raise ValueError(f"weights: {len(self.weights)} given for {len(self.members)} members")
        if not all(math.isfinite(w) for w in self.weights):
            raise ValueError("weights: must be finite numbers")
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"members: names must be unique ({', '.join(names)})")
        if self.method != "vote" and (min(self.weights) < 0 or sum(self.weights) <= 0):
            raise ValueError("weights: a distribution's weights must be >= 0 with a positive sum")
        if (self.method == "stack") != (self.stacker is not None):
            raise ValueError("stacker: a stack ensemble needs its stacker file, other methods take none")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)


def make_spec(data: dict[str, Any], where: str) -> EnsembleSpec:
    """A validated spec; ModelLoadError naming each field at fault (where: the file, or what built it)."""
    try:
        return EnsembleSpec.model_validate(data)
    except ValidationError as exc:
        # A whole-spec check names its field in its own message, and needs no pydantic prefix.
        problems = "; ".join(
            ".".join(str(p) for p in e["loc"])
            + ": " * bool(e["loc"])
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise ModelLoadError(f"{where}: {problems}") from exc


def read_spec(folder: Path) -> EnsembleSpec:
    """The folder's spec; ModelLoadError naming the field at fault."""
    path = folder / SPEC_FILE
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc}") from exc
    except ValueError as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from exc
    spec = make_spec(data, str(path))
    if spec.stacker is not None and not (folder / spec.stacker).is_file():
        raise ModelLoadError(f"{path}: stacker: {spec.stacker} is missing from the folder")
    return spec


def write_spec(folder: Path, spec: EnsembleSpec) -> Path:
    path = folder / SPEC_FILE
    path.write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n")
    return path
