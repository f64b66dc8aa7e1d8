"""What the registry accepts from what it reads: names, references, manifests and alias records.

A manifest or an alias record comes from a bucket or an artifact server that someone else may write
to, and its paths become files written as root on every host. So everything read is checked here,
before anything is written: the one pattern for names, aliases and versions, and the one shape of a
manifest (each entry a relative POSIX path inside its folder, a size and a sha256).

Standard library only, and nothing else of model_runtime: the registry, the model_registry Ansible
module, the role's filter plugin (filter_plugins/manifest.py) and the cloud boot script all call this
module, the last two where nothing else of ours is installed.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

# Names, aliases and versions: one path component that is neither hidden nor "..".
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
# The files a version's folder holds besides its entries (build_manifest never lists them).
MANIFEST = "manifest.json"
VERIFIED = ".verified"
DEFAULT_ALIAS = "stable"

_NAME = re.compile(NAME_PATTERN)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UntrustedError(ValueError):
    """Something read that is refused; the message names the key and what is wrong."""


def name_problem(value: object, what: str) -> str | None:
    """None for a valid name, alias or version; else a message naming `what`."""
    if isinstance(value, str) and _NAME.match(value):
        return None
    return (
        f"{what} {value!r}: not a name (a letter or digit, then letters, digits, '.', '_' or '-', "
        "at most 100 characters)"
    )


def check_name(value: object, what: str) -> str:
    problem = name_problem(value, what)
    if problem:
        raise UntrustedError(problem)
    return str(value)


def path_problem(value: object, what: str) -> str | None:
    """None for a path that stays inside its folder whatever the folder; else a message naming `what`.

    Relative, POSIX, no '.', '..' or empty component, nothing hidden (build_manifest lists no hidden
    file, and the folder's own marks are hidden), no control character, no backslash (a separator
    elsewhere), and not the folder's own manifest."""
    if not isinstance(value, str) or not value:
        return f"{what} {value!r}: not a relative path"
    if _CONTROL.search(value):
        return f"{what} {value!r}: contains a NUL or another control character"
    if "\\" in value:
        return f"{what} {value!r}: contains a backslash"
    if value.startswith("/"):
        return f"{what} {value!r}: is absolute"
    parts = value.split("/")
    if ".." in parts:
        return f"{what} {value!r}: leaves its folder ('..')"
    if "" in parts:
        return f"{what} {value!r}: has an empty component ('//' or a trailing '/')"
    if any(part.startswith(".") for part in parts):
        return f"{what} {value!r}: has a hidden component (or '.')"
    if parts[-1] == MANIFEST:
        return f"{what} {value!r}: collides with the version's {MANIFEST}"
    return None


def _entry_problems(index: int, entry: object) -> list[str]:
    where = f"files[{index}]"
    if not isinstance(entry, dict):
        return [f"{where}: not an object"]
    problems = [path_problem(entry.get("path"), f"{where}.path")]
    size = entry.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        problems.append(f"{where}.size {size!r}: not a whole number of bytes >= 0")
    if not isinstance(entry.get("sha256"), str) or not _SHA256.match(entry["sha256"]):
        problems.append(f"{where}.sha256 {entry.get('sha256')!r}: not 64 lowercase hex digits")
    return [p for p in problems if p]


def manifest_problems(manifest: object) -> list[str]:
    """Every problem of a manifest read from a store or a source (empty: it is safe to act on)."""
    if not isinstance(manifest, dict):
        return ["the manifest is not a JSON object"]
    problems = [name_problem(manifest.get("name"), "name"), name_problem(manifest.get("version"), "version")]
    digest = manifest.get("digest")
    if not isinstance(digest, str) or not _SHA256.match(digest):
        problems.append(f"digest {digest!r}: not 64 lowercase hex digits")
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        return [p for p in problems if p] + ["files: not a non-empty list"]
    for index, entry in enumerate(files):
        problems.extend(_entry_problems(index, entry))
    paths = [e["path"] for e in files if isinstance(e, dict) and isinstance(e.get("path"), str)]
    counts = Counter(paths)
    listed = set(counts)
    for path in sorted(p for p, count in counts.items() if count > 1):
        problems.append(f"files: {path!r} is listed more than once")
    for path in sorted(listed):
        parts = path.split("/")
        folders = {"/".join(parts[:n]) for n in range(1, len(parts))}
        problems.extend(f"files: {path!r} lies under {file!r}, which is a file" for file in folders & listed)
    return [p for p in problems if p]


def check_manifest(manifest: object, where: str) -> dict[str, Any]:
    """The manifest, or UntrustedError naming `where` and every problem."""
    problems = manifest_problems(manifest)
    if problems:
        raise UntrustedError(f"{where}: refused: " + "; ".join(problems))
    assert isinstance(manifest, dict)
    return manifest


def alias_problems(record: object) -> list[str]:
    """Every problem of an alias record ({"version", "history", ...}) read from a store."""
    if not isinstance(record, dict):
        return ["the alias record is not a JSON object"]
    problems = [name_problem(record.get("version"), "version")]
    history = record.get("history")
    if not isinstance(history, list):
        problems.append(f"history {history!r}: not a list")
    else:
        problems.extend(name_problem(v, f"history[{i}]") for i, v in enumerate(history))
    return [p for p in problems if p]


def pin_problems(record: object) -> list[str]:
    """Every problem of a pin record ({"versions", ...}) read from a store."""
    if not isinstance(record, dict):
        return ["the pin record is not a JSON object"]
    versions = record.get("versions")
    if not isinstance(versions, list):
        return [f"versions {versions!r}: not a list"]
    return [p for p in (name_problem(v, f"versions[{i}]") for i, v in enumerate(versions)) if p]


def split_ref(ref: object) -> tuple[str, str | None, str | None]:
    """NAME, NAME@ALIAS or NAME:VERSION -> (name, version, alias); a bare NAME means NAME@stable."""
    if not isinstance(ref, str):
        raise UntrustedError(f"{ref!r}: not a reference (NAME, NAME@ALIAS or NAME:VERSION)")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = None
    elif ":" in ref:
        name, version = ref.split(":", 1)
        alias = None
    else:
        name, version, alias = ref, None, DEFAULT_ALIAS
    problem = name_problem(name, "name") or (
        name_problem(alias, "alias") if alias is not None else name_problem(version, "version")
    )
    if problem:
        raise UntrustedError(f"{ref!r}: not a reference (NAME, NAME@ALIAS or NAME:VERSION): {problem}")
    return name, version, alias
