"""A versioned model registry over a store (registry/stores.py).

Layout under the store's root, per model name:

    <name>/versions/<version>/files/<path...>   the model's files, uploaded first
    <name>/versions/<version>/manifest.json     written last: the version exists once this exists
    <name>/aliases/<alias>.json                  {"version", "history", "updated"}: one atomic object
    <name>/pins/<holder>.json                    {"versions", "updated"}: what a deployment (a stack,
                                                 an inventory's fleet) runs or may return to

A version is immutable and named by the time of its push plus a random suffix, so two concurrent
pushes of the same name land as two versions. An alias moves by rewriting its one object, so a reader
sees the old target or the new one, never half a promotion; its history makes rollback one step back.
A pin is its holder's whole list, rewritten at each of its deployments: gc never deletes a pinned
version (an instance that boots from a pinned NAME:VERSION, a release record's previous version).
Two writers of one alias cannot lose each other's move: each rewrite is conditional on the object
being the one it read (registry/stores.py), and the loser reads again and retries.
References: NAME (the `stable` alias), NAME@ALIAS, NAME:VERSION.

Whoever can write to the store is not trusted with the hosts: every name, version, alias record and
manifest read from it is checked (registry/trust.py) before a file is written or a URL handed out.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model_runtime.errors import OperatorError
from model_runtime.registry.manifest import (
    MANIFEST,
    ManifestError,
    build_manifest,
    checked,
    verify_folder,
    write_manifest,
)
from model_runtime.registry.stores import Store, open_store
from model_runtime.registry.trust import (
    UntrustedError,
    alias_problems,
    check_name,
    name_problem,
    pin_problems,
    split_ref,
)

# Attempts at moving an alias while other writers move it too (each attempt one read and one
# conditional write); a writer that loses them all gets a RegistryError, never a lost move.
ALIAS_WRITE_ATTEMPTS = 20


class RegistryError(OperatorError, ValueError):
    """A reference that does not resolve, a refused operation; the message says which."""


def pin_key(name: str, holder: str) -> str:
    return f"{name}/pins/{holder}.json"


def pin_record(versions: list[str], **extra: Any) -> dict[str, Any]:
    """A pin object's content (written by `registry pin`, the playbooks and the cloud stack alike)."""
    return {"versions": sorted(set(versions)), **extra}


def new_version() -> str:
    """Time-ordered to the microsecond (so versions sort by push time), unique by the random tail."""
    now = time.time()
    return (
        time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}-{secrets.token_hex(3)}"
    )


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """NAME, NAME@ALIAS or NAME:VERSION -> (name, version, alias)."""
    try:
        return split_ref(ref)
    except UntrustedError as exc:
        raise RegistryError(str(exc)) from None


def _names(**named: str) -> None:
    """RegistryError naming the first argument that is not a name (they become keys and paths)."""
    for what, value in named.items():
        try:
            check_name(value, what)
        except UntrustedError as exc:
            raise RegistryError(str(exc)) from None


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store

    @classmethod
    def open(cls, url: str) -> Registry:
        return cls(open_store(url))

    # --- reading ------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return [n for n in self.store.children("") if name_problem(n, "name") is None]

    def versions(self, name: str) -> list[str]:
        """Committed versions (their manifest exists), oldest first. A listed name that is not a
        version name was never pushed by a registry: it is not a version."""
        _names(name=name)
        return [
            v
            for v in self.store.children(f"{name}/versions")
            if name_problem(v, "version") is None and self.store.exists(f"{name}/versions/{v}/{MANIFEST}")
        ]

    def manifest(self, name: str, version: str) -> dict[str, Any]:
        """The version's manifest, refused unless it is well formed and names this very version."""
        _names(name=name, version=version)
        key = f"{name}/versions/{version}/{MANIFEST}"
        try:
            data = self.store.read_bytes(key)
        except KeyError:
            raise RegistryError(f"{name}:{version}: no such version") from None
        where = f"{self.store.url}: {key}"
        try:
            manifest = checked(_json(data, where), where)
        except ManifestError as exc:
            raise RegistryError(str(exc)) from None
        if (manifest["name"], manifest["version"]) != (name, version):
            raise RegistryError(f"{where}: refused: it describes {manifest['name']}:{manifest['version']}")
        return manifest

    def aliases(self, name: str) -> dict[str, dict[str, Any]]:
        _names(name=name)
        objects = self.store.children(f"{name}/aliases")
        listed = [a.removesuffix(".json") for a in objects if a.endswith(".json")]
        return {a: self._alias(name, a) or {} for a in listed if name_problem(a, "alias") is None}

    def _alias(self, name: str, alias: str) -> dict[str, Any] | None:
        return self._alias_tagged(name, alias)[0]

    def _alias_tagged(self, name: str, alias: str) -> tuple[dict[str, Any] | None, str | None]:
        """The alias record (None when there is none) and the tag a conditional rewrite needs."""
        key = f"{name}/aliases/{alias}.json"
        try:
            data, tag = self.store.read_tagged(key)
        except KeyError:
            return None, None
        record = _json(data, f"{self.store.url}: {key}")
        problems = alias_problems(record)
        if problems:
            raise RegistryError(f"{self.store.url}: {key}: refused: " + "; ".join(problems))
        return record, tag

    def pins(self, name: str) -> dict[str, list[str]]:
        """holder -> the versions it pins. A pin that cannot be read is an error, not an empty pin:
        gc must not delete what an unreadable pin may protect."""
        _names(name=name)
        objects = self.store.children(f"{name}/pins")
        pins = {}
        for holder in sorted(o.removesuffix(".json") for o in objects if o.endswith(".json")):
            key = pin_key(name, holder)
            try:
                data = self.store.read_bytes(key)
            except KeyError:  # unpinned since the listing
                continue
            record = _json(data, f"{self.store.url}: {key}")
            problems = pin_problems(record) + [p for p in [name_problem(holder, "holder")] if p]
            if problems:
                raise RegistryError(f"{self.store.url}: {key}: refused: " + "; ".join(problems))
            pins[holder] = list(record["versions"])
        return pins

    def resolve(self, ref: str) -> tuple[str, str]:
        """A reference -> (name, version) of a committed version."""
        name, version, alias = parse_ref(ref)
        if alias is not None:
            record = self._alias(name, alias)
            if record is None:
                raise RegistryError(f"{name}@{alias}: no such alias (promote a version first)")
            version = record["version"]
        assert version is not None  # a reference names a version or an alias (parse_ref)
        self.manifest(name, version)  # raises when the version is not committed
        return name, version

    # --- writing -------------------------------------------------------------------------------------
    def push(self, name: str, folder: Path, **record: Any) -> dict[str, Any]:
        """Upload folder as a new immutable version of name; extra fields (source, lineage, checks,
        format) go into its manifest. The manifest is written last."""
        _names(name=name)
        version = new_version()
        manifest = build_manifest(folder, name, version, **record)
        prefix = f"{name}/versions/{version}"
        for entry in manifest["files"]:
            self.store.upload(f"{prefix}/files/{entry['path']}", folder / entry["path"])
        self.store.write_bytes(f"{prefix}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
        return manifest

    def promote(self, name: str, version: str, alias: str) -> dict[str, Any]:
        _names(name=name, version=version, alias=alias)
        self.manifest(name, version)

        def moved(current: dict[str, Any] | None) -> dict[str, Any]:
            history = list(current["history"]) if current else []
            if current and current["version"] != version:
                history.append(current["version"])
            return {"version": version, "history": history, "updated": _now()}

        return self._move_alias(name, alias, moved)

    def rollback(self, name: str, alias: str) -> dict[str, Any]:
        """The alias returns to the version it pointed to before; that step leaves the history."""
        _names(name=name, alias=alias)

        def back(current: dict[str, Any] | None) -> dict[str, Any]:
            if not current or not current["history"]:
                raise RegistryError(f"{name}@{alias}: nothing to roll back to")
            history = list(current["history"])
            previous = history.pop()
            return {
                "version": previous,
                "history": history,
                "updated": _now(),
                "rolled_back_from": current["version"],
            }

        return self._move_alias(name, alias, back)

    def _move_alias(
        self, name: str, alias: str, change: Callable[[dict[str, Any] | None], dict[str, Any]]
    ) -> dict[str, Any]:
        """Read the alias, compute its next record, write it only if nobody wrote in between; on a
        lost race read again, a bounded number of times, after a short random pause."""
        key = f"{name}/aliases/{alias}.json"
        for attempt in range(ALIAS_WRITE_ATTEMPTS):
            current, tag = self._alias_tagged(name, alias)
            record = change(current)
            if self.store.write_if(key, json.dumps(record, indent=2).encode(), tag):
                return record
            time.sleep(random.uniform(0, 0.01 * (attempt + 1)))  # noqa: S311 (spreading retries only)
        raise RegistryError(
            f"{name}@{alias}: other writers moved the alias during each of {ALIAS_WRITE_ATTEMPTS} "
            "attempts; nothing was changed by this one, try again"
        )

    def pin(self, name: str, holder: str, versions: list[str]) -> dict[str, Any]:
        """Record the versions holder depends on (its whole list: the previous one is replaced).
        Versions that are not in the registry (a fleet's own builds) may be pinned: nothing to keep."""
        _names(name=name, holder=holder)
        for index, version in enumerate(versions):
            _names(**{f"versions[{index}]": version})
        record = pin_record(versions, updated=_now())
        self.store.write_bytes(pin_key(name, holder), json.dumps(record, indent=2).encode())
        return record

    def unpin(self, name: str, holder: str) -> None:
        _names(name=name, holder=holder)
        self.store.delete(pin_key(name, holder))

    def gc(self, name: str, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions, never one an alias points to or can roll back to,
        nor one a deployment pins."""
        _names(name=name)
        protected = set()
        for record in self.aliases(name).values():
            protected.add(record.get("version"))
            protected.update(record.get("history", []))
        for versions in self.pins(name).values():
            protected.update(versions)
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
        if dest.exists():  # a copy pulled before, or anything else: verify_folder follows no link out
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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise RegistryError(f"{where}: refused: not valid JSON ({exc})") from None
