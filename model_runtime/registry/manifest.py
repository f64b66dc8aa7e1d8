"""A model version's manifest: every file's path, size and sha256, so that any copy of the version
(a host's model folder, a registry entry, a download) can be checked byte for byte before it is used.

The manifest lives beside the files as `manifest.json` and does not list itself. Its `digest` names
the content (sha256 over the sorted file list), so two folders with the same digest hold the same model.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from model_runtime.errors import OperatorError
from model_runtime.registry.trust import MANIFEST, VERIFIED, UntrustedError, check_manifest

_CHUNK = 1 << 20
_SKIPPED = {MANIFEST, VERIFIED}


class ManifestError(OperatorError, ValueError):
    """A folder that does not match its manifest; the message names the file."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    """The model's files: not the folder's own marks, nothing hidden (nor under a hidden folder, such
    as a download tool's .cache/), which is also what a manifest read back may list."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.name not in _SKIPPED
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def content_digest(files: list[dict[str, Any]]) -> str:
    canonical = json.dumps(
        [[f["path"], f["size"], f["sha256"]] for f in sorted(files, key=lambda f: f["path"])]
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def build_manifest(folder: Path, name: str, version: str | None = None, **extra: Any) -> dict[str, Any]:
    """The manifest of a folder; version defaults to the first 12 hex digits of the content digest."""
    files = [
        {"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in _files(folder)
    ]
    if not files:
        raise ManifestError(f"{folder}: no files to describe")
    digest = content_digest(files)
    manifest = {
        "name": name,
        "version": version or digest[:12],
        "digest": digest,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": files,
        **extra,
    }
    return checked(manifest, str(folder))  # what every reader will refuse is refused here first


def checked(manifest: object, where: str) -> dict[str, Any]:
    """The manifest, when its names and every entry's path, size and sha256 are acceptable
    (registry/trust.py); else ManifestError naming where it was read and every problem."""
    try:
        return check_manifest(manifest, where)
    except UntrustedError as exc:
        raise ManifestError(str(exc)) from None


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    path = folder / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except OSError as exc:
        raise ManifestError(f"{folder}: no readable {MANIFEST} ({exc})") from exc
    except ValueError as exc:
        raise ManifestError(f"{folder / MANIFEST}: not valid JSON ({exc})") from exc
    return checked(manifest, str(folder / MANIFEST))


def verify_folder(folder: Path, manifest: dict[str, Any]) -> None:
    """Raise ManifestError naming the first file that is missing, of the wrong size, or corrupt, or
    that lies outside the folder once symlinks are followed (the folder may predate this manifest)."""
    checked(manifest, f"the manifest for {folder}")
    inside = folder.resolve()
    for entry in manifest["files"]:
        path = folder / entry["path"]
        if not path.resolve().is_relative_to(inside):
            raise ManifestError(f"{entry['path']}: resolves to {path.resolve()}, outside {folder}")
        if not path.is_file():
            raise ManifestError(f"{entry['path']}: missing")
        if path.stat().st_size != entry["size"]:
            raise ManifestError(
                f"{entry['path']}: {path.stat().st_size} bytes, the manifest says {entry['size']}"
            )
        if sha256_file(path) != entry["sha256"]:
            raise ManifestError(f"{entry['path']}: sha256 does not match the manifest")
