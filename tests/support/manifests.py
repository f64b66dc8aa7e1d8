"""Crafted manifests: what someone who can write to a registry bucket or an artifact server could
publish, for the tests that check the registry and the model_artifacts role refuse it."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_runtime.registry.manifest import content_digest
from model_runtime.registry.stores import Store, StoreError

PAYLOAD = b"not a model: a file that must not land where the manifest says\n"
ESCAPED = "escaped.bin"


@dataclass(frozen=True)
class Crafted:
    """One bad manifest: an entry path, or a name or version, and what the refusal says."""

    id: str
    says: str
    path: str = "weights.bin"
    name: str = "demo"
    version: str = "v1"

    def entry_path(self, outside: Path) -> str:
        return self.path.replace("{outside}", str(outside))


# {outside} is a folder beside the destination: an absolute path there must stay empty too.
CASES = [
    Crafted("absolute", "is absolute", path=f"{{outside}}/{ESCAPED}"),
    Crafted("dotdot", "leaves its folder", path=f"../{ESCAPED}"),
    Crafted("dotdot-deep", "leaves its folder", path=f"weights/../../{ESCAPED}"),
    Crafted("backslash", "contains a backslash", path=f"..\\{ESCAPED}"),
    Crafted("nul", "contains a NUL", path=f"{ESCAPED}\x00.txt"),
    Crafted("hidden", "has a hidden component", path=".verified"),
    Crafted("manifest", "collides with the version's manifest.json", path="manifest.json"),
    Crafted("bad-name", "name '../escaped': not a name", name="../escaped"),
    Crafted("bad-version", "version '../escaped': not a name", version="../escaped"),
]


def manifest_of(name: str, version: str, paths: list[str]) -> dict[str, Any]:
    """A manifest that is right in every other way: each path holds PAYLOAD, the digest matches."""
    sha256 = hashlib.sha256(PAYLOAD).hexdigest()
    files = [{"path": p, "size": len(PAYLOAD), "sha256": sha256} for p in paths]
    return {"name": name, "version": version, "digest": content_digest(files), "files": files}


def crafted(case: Crafted, outside: Path) -> dict[str, Any]:
    return manifest_of(case.name, case.version, ["config.json", case.entry_path(outside)])


def plant(store: Store, name: str, version: str, manifest: dict[str, Any]) -> None:
    """Publish manifest as name:version in store, with PAYLOAD under every key it lists that the store
    can hold (a folder store refuses some keys; the registry must refuse the manifest first anyway)."""
    prefix = f"{name}/versions/{version}"
    for entry in manifest["files"]:
        with contextlib.suppress(ValueError, StoreError):
            store.write_bytes(f"{prefix}/files/{entry['path']}", PAYLOAD)
    store.write_bytes(f"{prefix}/manifest.json", json.dumps(manifest).encode())


def source_folder(folder: Path, manifest: dict[str, Any]) -> Path:
    """A folder source (the role's model_artifacts_source) publishing manifest, PAYLOAD in its files."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_bytes(PAYLOAD)
    (folder / "weights.bin").write_bytes(PAYLOAD)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def files_named(root: Path, name: str) -> list[Path]:
    return [p for p in root.rglob("*") if name in p.name]
