"""A versioned model registry over a store (registry/stores.py).

Layout under the store's root, per model name:

    <name>/versions/<version>/files/<path...>   the model's files, uploaded first
    <name>/versions/<version>/manifest.json     written last: the version exists once this exists
    <name>/aliases/<alias>.json                  {"version", "history", "updated"}: one atomic object

A version is immutable and named by the time of its push plus a random suffix, so two concurrent
pushes of the same name land as two versions. An alias moves by rewriting its one object, so a reader
sees the old target or the new one, never half a promotion; its history makes rollback one step back.
References: NAME (the `stable` alias), NAME@ALIAS, NAME:VERSION.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from model_runtime.errors import OperatorError
from model_runtime.registry.manifest import (
    MANIFEST,
    ManifestError,
    build_manifest,
    verify_folder,
    write_manifest,
)
from model_runtime.registry.stores import Store, open_store

DEFAULT_ALIAS = "stable"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class RegistryError(OperatorError, ValueError):
    """A reference that does not resolve, a refused operation; the message says which."""


def new_version() -> str:
    """Time-ordered to the microsecond (so versions sort by push time), unique by the random tail."""
    now = time.time()
    return (
        time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}-{secrets.token_hex(3)}"
    )


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """NAME, NAME@ALIAS or NAME:VERSION -> (name, version, alias)."""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = None
    elif ":" in ref:
        name, version = ref.split(":", 1)
        alias = None
    else:
        name, version, alias = ref, None, DEFAULT_ALIAS
    if not _NAME.match(name) or (alias is not None and not _NAME.match(alias)) or version == "":
        raise RegistryError(f"{ref!r}: not a reference (NAME, NAME@ALIAS or NAME:VERSION)")
    return name, version, alias


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store

    @classmethod
    def open(cls, url: str) -> Registry:
        return cls(open_store(url))

    # --- reading ------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return self.store.children("")

    def versions(self, name: str) -> list[str]:
        """Committed versions (their manifest exists), oldest first."""
        return [
            v
            for v in self.store.children(f"{name}/versions")
            if self.store.exists(f"{name}/versions/{v}/{MANIFEST}")
        ]

    def manifest(self, name: str, version: str) -> dict[str, Any]:
        try:
            return json.loads(self.store.read_bytes(f"{name}/versions/{version}/{MANIFEST}"))
        except KeyError:
            raise RegistryError(f"{name}:{version}: no such version") from None

    def aliases(self, name: str) -> dict[str, dict[str, Any]]:
        return {a.removesuffix(".json"): self._alias(name, a.removesuffix(".json")) or {}
                for a in self.store.children(f"{name}/aliases") if a.endswith(".json")}  # fmt: skip

    def _alias(self, name: str, alias: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.store.read_bytes(f"{name}/aliases/{alias}.json"))
        except KeyError:
            return None

    def resolve(self, ref: str) -> tuple[str, str]:
        """A reference -> (name, version) of a committed version."""
        name, version, alias = parse_ref(ref)
        if alias is not None:
            record = self._alias(name, alias)
            if record is None:
                raise RegistryError(f"{name}@{alias}: no such alias (promote a version first)")
            version = record["version"]
        self.manifest(name, version)  # raises when the version is not committed
        return name, version

    # --- writing -------------------------------------------------------------------------------------
    def push(self, name: str, folder: Path, **record: Any) -> dict[str, Any]:
        """Upload folder as a new immutable version of name; extra fields (source, lineage, checks,
        format) go into its manifest. The manifest is written last."""
        if not _NAME.match(name):
            raise RegistryError(f"{name!r}: names are letters, digits, '.', '_' and '-'")
        version = new_version()
        manifest = build_manifest(folder, name, version, **record)
        prefix = f"{name}/versions/{version}"
        for entry in manifest["files"]:
            self.store.upload(f"{prefix}/files/{entry['path']}", folder / entry["path"])
        self.store.write_bytes(f"{prefix}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
        return manifest

    def promote(self, name: str, version: str, alias: str) -> dict[str, Any]:
        if not _NAME.match(alias):
            raise RegistryError(f"{alias!r}: not an alias name")
        self.manifest(name, version)
        current = self._alias(name, alias)
        history = list(current["history"]) if current else []
        if current and current["version"] != version:
            history.append(current["version"])
        record = {
            "version": version,
            "history": history,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.store.write_bytes(f"{name}/aliases/{alias}.json", json.dumps(record, indent=2).encode())
        return record

    def rollback(self, name: str, alias: str) -> dict[str, Any]:
        """The alias returns to the version it pointed to before; that step leaves the history."""
        current = self._alias(name, alias)
        if not current or not current["history"]:
            raise RegistryError(f"{name}@{alias}: nothing to roll back to")
        history = list(current["history"])
        previous = history.pop()
        record = {
            "version": previous,
            "history": history,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "rolled_back_from": current["version"],
        }
        self.store.write_bytes(f"{name}/aliases/{alias}.json", json.dumps(record, indent=2).encode())
        return record

    def gc(self, name: str, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions, never one an alias points to or can roll back to."""
        protected = set()
        for record in self.aliases(name).values():
            protected.add(record.get("version"))
            protected.update(record.get("history", []))
        versions = self.versions(name)
        doomed = [v for v in versions[: max(0, len(versions) - keep)] if v not in protected]
        for version in doomed:
            # The manifest goes first: from that moment the version no longer exists for readers.
            self.store.delete(f"{name}/versions/{version}/{MANIFEST}")
            self.store.delete_prefix(f"{name}/versions/{version}")
        return doomed

    def fetch_plan(self, ref: str, seconds: int = 3600) -> dict[str, Any]:
        """A version's manifest with a fetch URL per file, for hosts that download without credentials
        (the model_artifacts role checks each file's sha256 as it fetches it)."""
        name, version = self.resolve(ref)
        manifest = self.manifest(name, version)
        prefix = f"{name}/versions/{version}/files"
        files = [
            {**entry, "url": self.store.fetch_url(f"{prefix}/{entry['path']}", seconds)}
            for entry in manifest["files"]
        ]
        return {**manifest, "files": files}

    # --- pulling -------------------------------------------------------------------------------------
    def pull(self, ref: str, dest: Path) -> dict[str, Any]:
        """Download a version to dest: into a temporary folder beside it, every file checked against the
        manifest, then renamed. A failed or interrupted pull leaves nothing at dest."""
        name, version = self.resolve(ref)
        manifest = self.manifest(name, version)
        if dest.exists():
            try:
                verify_folder(dest, manifest)
            except ManifestError as exc:
                raise RegistryError(
                    f"{dest} exists and is not {name}:{version} ({exc}); choose a new folder"
                ) from exc
            return manifest
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            prefix = f"{name}/versions/{version}/files"
            for entry in manifest["files"]:
                target = staging / entry["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                self.store.download(f"{prefix}/{entry['path']}", target)
            verify_folder(staging, manifest)
            write_manifest(staging, manifest)
            staging.chmod(0o755)
            os.replace(staging, dest)
        except ManifestError as exc:
            raise RegistryError(f"{name}:{version} from {self.store.url} is corrupt: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return manifest
