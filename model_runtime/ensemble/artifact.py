"""Ensemble artifacts: resolving candidate models, writing an ensemble folder, pushing it to the registry.

Members are referenced, not copied, when they come from the registry: `registry:NAME:VERSION`, pinned
when the folder is written (an alias given as a candidate is resolved then), so an ensemble version
names exact members and a rollback of the ensemble's alias is exact too. A member that is a local
folder is embedded (copied under `members/`), so the artifact is complete on its own. Pushing an
ensemble also points an alias `ensemble.<NAME>` of each registry member at the pinned version: the
registry's gc never deletes a version an alias holds or can roll back to, so an ensemble's members
outlive the moves of their own `stable` alias.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from model_runtime.config import ModelSettings, RegistrySettings
from model_runtime.engine.base import ModelLoadError
from model_runtime.engine.loading import detect_format
from model_runtime.ensemble.combine import Stacker
from model_runtime.ensemble.spec import (
    STACKER_FILE,
    Combine,
    EnsembleSpec,
    Method,
    make_spec,
    read_spec,
    write_spec,
)
from model_runtime.registry.registry import Registry, RegistryError, parse_ref
from model_runtime.registry.resolve import PREFIX, materialize
from model_runtime.staging import staged

REPORT_FILE = "evaluation.json"
EMBEDDED = "members"


@dataclass(frozen=True)
class Candidate:
    name: str
    folder: Path  # a local copy of its files
    pinned: str | None  # registry:NAME:VERSION, or None for a local folder (embedded when written)


def resolve_candidates(sources: Sequence[str], registry: RegistrySettings) -> list[Candidate]:
    """Local folders, or registry:NAME[@ALIAS|:VERSION] (pulled once into the registry cache and
    pinned to the version it resolved to). Names are the folder's or the registry's, made unique."""
    candidates: list[Candidate] = []
    for source in sources:
        if source.startswith(PREFIX):
            if not registry.url:
                raise RegistryError(f"{source}: a registry candidate needs a registry (--registry)")
            pulled = materialize(ModelSettings(path=source), registry)
            name, folder = pulled.served_name or "", Path(pulled.path)
            pinned: str | None = f"{PREFIX}{name}:{pulled.version}"
        else:
            folder = Path(source)
            name, pinned = folder.resolve().name, None
        if detect_format(folder).kind == "ensemble":
            raise ModelLoadError(f"{source}: an ensemble cannot be a candidate member; give its members")
        taken = {c.name for c in candidates}
        unique, suffix = name, 2
        while unique in taken:
            unique, suffix = f"{name}-{suffix}", suffix + 1
        candidates.append(Candidate(unique, folder, pinned))
    return candidates


def write_ensemble(
    out: Path,
    members: Sequence[Candidate],
    tokenizer: PreTrainedTokenizerBase,
    method: Method,
    weights: Sequence[float],
    combine: Combine = "probabilities",
    stacker: Stacker | None = None,
    record: dict[str, Any] | None = None,
    report: dict[str, Any] | None = None,
) -> EnsembleSpec:
    """Write the ensemble folder (replacing out as a whole when complete) and return its spec."""
    with staged(out) as staging:
        specs = []
        for member in members:
            source = member.pinned
            if source is None:
                source = f"{EMBEDDED}/{member.name}"
                shutil.copytree(member.folder, staging / source)
            specs.append({"name": member.name, "source": source})
        if stacker is not None:
            stacker.save(staging / STACKER_FILE)
        spec = make_spec(
            {
                "method": method,
                "combine": combine,
                "members": specs,
                "weights": list(weights),
                "stacker": STACKER_FILE if stacker is not None else None,
                "record": record or {},
            },
            f"ensemble for {out}",
        )
        write_spec(staging, spec)
        tokenizer.save_pretrained(staging)
        if report is not None:
            (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return spec


def push_ensemble(registry: Registry, name: str, folder: Path, alias: str | None = None) -> dict[str, Any]:
    """Push an ensemble folder as a new version of name, after checking that every registry member
    exists; protect each member version with the alias ensemble.<name>; promote alias if given."""
    spec = read_spec(folder)
    pinned = []
    for member in spec.members:
        if member.registry_ref is None:
            continue
        member_name, version, _ = parse_ref(member.registry_ref.removeprefix(PREFIX))
        assert version is not None  # the spec refuses unpinned members
        try:
            registry.manifest(member_name, version)
        except RegistryError as exc:
            raise RegistryError(f"member {member.name}: {exc} in {registry.store.url}") from exc
        pinned.append((member_name, version))
    manifest = registry.push(
        name,
        folder,
        format="ensemble",
        source=str(folder.resolve()),
        lineage={"method": spec.method, "members": [m.source for m in spec.members]},
        checks=spec.record.get("selection"),
    )
    for member_name, version in pinned:
        registry.promote(member_name, version, f"ensemble.{name}")
    if alias:
        registry.promote(name, manifest["version"], alias)
    return manifest
