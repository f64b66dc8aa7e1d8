"""Ensemble artifacts and the registry: candidates are pinned to the version their alias named, local
ones are embedded, a pushed ensemble's member versions survive gc after their own alias moves on, and a
push naming a member version the registry lacks is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from model_runtime.config import RegistrySettings
from model_runtime.ensemble.artifact import push_ensemble, resolve_candidates, write_ensemble
from model_runtime.ensemble.spec import SPEC_FILE, read_spec
from model_runtime.registry.registry import Registry, RegistryError
from tests.support.ensembles import member_folders

pytestmark = pytest.mark.unit


def test_candidates_are_pinned_or_embedded(members: Path, tmp_path: Path) -> None:
    first, second, _ = member_folders(members)
    registry = Registry.open(str(tmp_path / "registry"))
    old = registry.push("m", first)["version"]
    registry.promote("m", old, "stable")
    settings = RegistrySettings(url=str(tmp_path / "registry"), cache_dir=tmp_path / "cache")
    candidates = resolve_candidates(["registry:m@stable", str(second), str(first)], settings)
    assert [c.name for c in candidates] == ["m", "member-1", "member-0"]
    assert candidates[0].pinned == f"registry:m:{old}"
    assert candidates[0].folder == tmp_path / "cache" / "m" / old
    registry.promote("m", registry.push("m", second)["version"], "stable")  # the alias moves on
    spec = write_ensemble(
        tmp_path / "ens", candidates, AutoTokenizer.from_pretrained(members), "vote", [0.5, 0.3, 0.2]
    )
    # The spec keeps the version the alias named when it was written; local members are copied in.
    assert [m.source for m in spec.members] == [f"registry:m:{old}", "members/member-1", "members/member-0"]
    assert (tmp_path / "ens" / "members" / "member-1" / "model.safetensors").read_bytes() == (
        second / "model.safetensors"
    ).read_bytes()
    assert read_spec(tmp_path / "ens") == spec
    with pytest.raises(RegistryError, match="needs a registry"):
        resolve_candidates(["registry:m@stable", str(first)], RegistrySettings())


def test_a_pushed_ensemble_keeps_its_member_versions(members: Path, tmp_path: Path) -> None:
    registry = Registry.open(str(tmp_path / "registry"))
    folders = member_folders(members)
    pinned = {f.name: registry.push(f.name, f)["version"] for f in folders[:2]}
    ensemble = tmp_path / "ens"
    ensemble.mkdir()
    AutoTokenizer.from_pretrained(members).save_pretrained(ensemble)
    spec = {
        "method": "average",
        "members": [{"name": n, "source": f"registry:{n}:{v}"} for n, v in pinned.items()],
        "weights": [1, 1],
    }
    (ensemble / SPEC_FILE).write_text(json.dumps(spec))
    manifest = push_ensemble(registry, "ens", ensemble, alias="stable")
    assert manifest["format"] == "ensemble"
    assert manifest["lineage"]["members"] == [m["source"] for m in spec["members"]]
    assert registry.resolve("ens@stable") == ("ens", manifest["version"])
    # member-0 moves on twice; gc keeping one version still keeps the one the ensemble pinned.
    for _ in range(2):
        registry.promote("member-0", registry.push("member-0", folders[2])["version"], "stable")
    registry.gc("member-0", keep=1)
    assert pinned["member-0"] in registry.versions("member-0")
    assert registry.aliases("member-0")["ensemble.ens"]["version"] == pinned["member-0"]
    spec["members"][1]["source"] = "registry:member-1:20200101-000000.000000-000000"
    (ensemble / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(RegistryError, match=r"member member-1: member-1:20200101.*no such version"):
        push_ensemble(registry, "ens", ensemble)
