"""`model-runtime registry ...`: push, list, show, pull, promote, rollback, gc, convert.

Reading a model folder's format and converting import torch (seconds), so push and convert import
those modules when they run: every other `model-runtime` command builds this parser too."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from model_runtime.convert import TARGETS
from model_runtime.convert.cli import evaluation_texts
from model_runtime.registry.registry import Registry, RegistryError, parse_ref

REGISTRY_ENV = "MODEL_RUNTIME_REGISTRY"


def _registry(args: argparse.Namespace) -> Registry:
    url = args.registry or os.environ.get(REGISTRY_ENV)
    if not url:
        raise RegistryError(
            f"no registry: give --registry (a folder or s3://bucket/prefix) or set {REGISTRY_ENV}"
        )
    return Registry.open(url)


def _print(data: object) -> None:
    print(json.dumps(data, indent=2))


def _push(args: argparse.Namespace) -> int:
    from model_runtime.engine.loading import detect_format  # torch: see the module's doc

    registry = _registry(args)
    fmt = detect_format(args.folder)  # refuse an incomplete folder before uploading anything
    record = (
        json.loads((args.folder / "conversion.json").read_text())
        if (args.folder / "conversion.json").exists()
        else {}
    )
    manifest = registry.push(
        args.name, args.folder, format=fmt.kind, source=args.source or str(args.folder.resolve()),
        checks=record.get("checks"),
    )  # fmt: skip
    if args.alias:
        registry.promote(args.name, manifest["version"], args.alias)
    print(f"{args.name}:{manifest['version']}" + (f" -> @{args.alias}" if args.alias else ""))
    return 0


def _list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    if not args.name:
        for name in registry.names():
            print(name)
        return 0
    by_version: dict[str, list[str]] = {}
    for alias, record in registry.aliases(args.name).items():
        by_version.setdefault(record["version"], []).append(alias)
    for version in registry.versions(args.name):
        marks = " ".join(f"@{a}" for a in sorted(by_version.get(version, [])))
        print(f"{args.name}:{version} {marks}".rstrip())
    return 0


def _show(args: argparse.Namespace) -> int:
    registry = _registry(args)
    name, version = registry.resolve(args.ref)
    manifest = registry.manifest(name, version)
    manifest["aliases"] = sorted(a for a, r in registry.aliases(name).items() if r.get("version") == version)
    _print(manifest)
    return 0


def _pull(args: argparse.Namespace) -> int:
    manifest = _registry(args).pull(args.ref, args.dest)
    print(f"{manifest['name']}:{manifest['version']} -> {args.dest}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    _print(_registry(args).promote(args.name, args.version, args.alias))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    _print(_registry(args).rollback(args.name, args.alias))
    return 0


def _pin(args: argparse.Namespace) -> int:
    _print(_registry(args).pin(args.name, args.holder, args.versions))
    return 0


def _unpin(args: argparse.Namespace) -> int:
    _registry(args).unpin(args.name, args.holder)
    print(f"{args.name}: {args.holder} pins nothing now")
    return 0


def _pins(args: argparse.Namespace) -> int:
    _print(_registry(args).pins(args.name))
    return 0


def _gc(args: argparse.Namespace) -> int:
    registry = _registry(args)
    for holder, versions in registry.pins(args.name).items():
        print(f"kept for {holder}: " + ", ".join(f"{args.name}:{v}" for v in versions))
    removed = registry.gc(args.name, args.keep)
    print("\n".join(f"removed {args.name}:{v}" for v in removed) or "nothing to remove")
    return 0


def _convert(args: argparse.Namespace) -> int:
    """Pull the source, convert it, push the result as a new version with its lineage and checks."""
    # torch: see the module's doc
    from model_runtime.convert.convert import convert
    from model_runtime.engine.loading import detect_format

    registry = _registry(args)
    name, source_version = registry.resolve(args.ref)
    work = Path(tempfile.mkdtemp(prefix="model-runtime-convert-"))
    try:
        source = work / "source"
        registry.pull(f"{name}:{source_version}", source)
        record = convert(
            source, args.to, work / "out", evaluation_texts(args.eval_text), args.min_agreement, name
        )
        (work / "out" / "conversion.json").unlink()  # its content goes into the manifest instead
        manifest = registry.push(
            name, work / "out", format=detect_format(work / "out").kind,
            source=f"{name}:{source_version}",
            lineage={"parent": f"{name}:{source_version}", "conversion": args.to,
                     "seconds": record["seconds"]},
            checks={**record["checks"], "min_agreement": args.min_agreement},
        )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.alias:
        registry.promote(name, manifest["version"], args.alias)
    _print({"version": f"{name}:{manifest['version']}", "checks": manifest["checks"]})
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    registry = commands.add_parser("registry", help="versioned model artifacts in a folder or S3")
    registry.add_argument("--registry", help=f"a folder or s3://bucket/prefix (default ${REGISTRY_ENV})")
    verbs = registry.add_subparsers(dest="verb", required=True)

    push = verbs.add_parser("push", help="upload a model folder as a new immutable version")
    push.add_argument("name")
    push.add_argument("folder", type=Path)
    push.add_argument("--alias", help="promote the new version to this alias too")
    push.add_argument("--source", help="where the model came from (recorded in the manifest)")
    push.set_defaults(run=_push)

    listing = verbs.add_parser("list", help="models, or the versions of one (with their aliases)")
    listing.add_argument("name", nargs="?")
    listing.set_defaults(run=_list)

    show = verbs.add_parser("show", help="a version's manifest: NAME, NAME@ALIAS or NAME:VERSION")
    show.add_argument("ref", type=_checked_ref)
    show.set_defaults(run=_show)

    pull = verbs.add_parser("pull", help="download a version into a new folder, every file verified")
    pull.add_argument("ref", type=_checked_ref)
    pull.add_argument("dest", type=Path)
    pull.set_defaults(run=_pull)

    promote = verbs.add_parser("promote", help="point an alias (stable, canary, ...) at a version")
    promote.add_argument("name")
    promote.add_argument("version")
    promote.add_argument("alias")
    promote.set_defaults(run=_promote)

    rollback = verbs.add_parser("rollback", help="return an alias to its previous version")
    rollback.add_argument("name")
    rollback.add_argument("alias")
    rollback.set_defaults(run=_rollback)

    _register_pins(verbs)

    gc = verbs.add_parser(
        "gc", help="delete old versions (never one an alias uses or can roll back to, nor a pinned one)"
    )
    gc.add_argument("name")
    gc.add_argument("--keep", type=int, default=5, help="newest versions kept (default 5)")
    gc.set_defaults(run=_gc)

    conversion = verbs.add_parser("convert", help="convert a version and push the result as a new one")
    conversion.add_argument("ref", type=_checked_ref)
    conversion.add_argument("--to", required=True, choices=TARGETS)
    conversion.add_argument("--alias", help="promote the converted version to this alias")
    conversion.add_argument("--min-agreement", type=float, default=0.9, help="top-1 agreement needed (0-1)")
    conversion.add_argument("--eval-text", type=Path, help="held-out text (default: the demo corpus)")
    conversion.set_defaults(run=_convert)


def _register_pins(verbs: argparse._SubParsersAction) -> None:
    pin = verbs.add_parser("pin", help="keep versions for a deployment: HOLDER's whole list, replaced")
    pin.add_argument("name")
    pin.add_argument("holder", help="who depends on them (a stack, a fleet): one pin each")
    pin.add_argument("versions", nargs="*", help="the versions it runs or may return to")
    pin.set_defaults(run=_pin)

    unpin = verbs.add_parser("unpin", help="drop a holder's pin (a deployment that is gone)")
    unpin.add_argument("name")
    unpin.add_argument("holder")
    unpin.set_defaults(run=_unpin)

    pins = verbs.add_parser("pins", help="the pins of a model: holder -> versions")
    pins.add_argument("name")
    pins.set_defaults(run=_pins)


def _checked_ref(ref: str) -> str:
    try:
        parse_ref(ref)
    except RegistryError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return ref
