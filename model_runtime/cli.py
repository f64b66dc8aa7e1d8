"""The `model-runtime` command."""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from model_runtime import __version__, doctor
from model_runtime.config import ServerSettings, load_settings
from model_runtime.convert import cli as convert_cli
from model_runtime.ensemble import cli as ensemble_cli
from model_runtime.errors import OperatorError
from model_runtime.logs import configure_logging
from model_runtime.registry import cli as registry_cli
from model_runtime.registry.manifest import build_manifest, write_manifest
from model_runtime.scheduler.worker import engine_starts

if TYPE_CHECKING:
    from model_runtime.demo.build import Recipe


def _serve(args: argparse.Namespace) -> int:
    overrides = {
        "model": {"path": args.model, "served_name": args.served_model_name, "version": args.model_version},
        "server": {
            "host": args.host,
            "port": args.port,
            "api_keys_file": args.api_key_file,
            "allow_unauthenticated": True if args.allow_unauthenticated else None,
        },
    }
    settings = load_settings(args.config, overrides)
    configure_logging(settings.logging.level, settings.logging.json_format)
    if settings.model.engine != "vllm":
        # The builtin engine process's imports begin now, beside this process's below (engine_starts.py);
        # a replica set to vLLM does without that process (a swap to a builtin engine starts it then).
        engine_starts.warm()
    # These import torch: only for the commands that need it.
    from model_runtime.ensemble.plugin import ENSEMBLES
    from model_runtime.server.run import serve

    code = serve(settings, reload=lambda: load_settings(args.config, overrides), plugin=ENSEMBLES)
    # Served and drained: the interpreter's last collection of every object torch and transformers made
    # would hold the exit up (a second or more), and frees nothing the exit does not.
    gc.freeze()
    return code


def _demo_model(args: argparse.Namespace) -> int:
    from model_runtime.demo.build import Recipe, build_demo_model, is_current  # torch, as serve's

    configure_logging("info", json_format=False)
    recipe = replace(Recipe(), steps=args.steps or Recipe.steps, seed=args.seed)
    if args.members:
        return _demo_members(args, recipe)
    if args.if_missing and is_current(args.out_dir, recipe):
        print(f"{args.out_dir}: demo model is current (recipe {recipe.fingerprint()})")
    else:
        print(json.dumps(build_demo_model(args.out_dir, recipe), indent=2))
    if args.int8:
        _demo_int8(args.out_dir, args.int8, args.if_missing)
    return 0


def _demo_int8(demo: Path, out: Path, if_missing: bool) -> None:
    from model_runtime.demo import int8  # torch, as serve's

    if if_missing and int8.is_current(demo, out):
        print(f"{out}: the demo model's int8 copy is current")
        return
    print(json.dumps(int8.build_int8_copy(demo, out), indent=2))


def _demo_members(args: argparse.Namespace, recipe: Recipe) -> int:
    from model_runtime.demo import members  # torch, as serve's

    fingerprint = members.members_fingerprint(recipe, args.method, args.members)
    if args.if_missing and members.is_current(args.out_dir, fingerprint):
        print(f"{args.out_dir}: ensemble members are current ({fingerprint})")
        return 0
    record = members.build_members(args.out_dir, args.members, args.method, recipe)
    for member in record["members"]:
        del member["example_weights"]  # in members.json; too long for a terminal
    print(json.dumps(record, indent=2))
    return 0


def _manifest(args: argparse.Namespace) -> int:
    manifest = build_manifest(args.folder, args.name, args.version)
    path = write_manifest(args.folder, manifest)
    print(f"{path}: {manifest['name']} version {manifest['version']}, {len(manifest['files'])} files")
    return 0


def _member_count(value: str) -> int:
    if not value.isdigit() or int(value) < 2:
        raise argparse.ArgumentTypeError(f"{value}: an ensemble needs 2 members or more")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="model-runtime", description=__doc__)
    parser.add_argument("--version", action="version", version=f"model-runtime {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve a model over the OpenAI API")
    serve.add_argument("--model", help="model folder (Hugging Face format)")
    serve.add_argument("--served-model-name", help="name clients use (default: the folder name)")
    serve.add_argument("--model-version", help="version reported by /v1/models and system_fingerprint")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help=f"listen port (default {ServerSettings().port})")
    serve.add_argument("--api-key-file", type=Path, help="file with one API key per line")
    serve.add_argument("--allow-unauthenticated", action="store_true", help="serve without API keys")
    serve.add_argument("--config", type=Path, help="YAML settings file (docs/settings.md)")
    serve.set_defaults(run=_serve)

    demo = commands.add_parser("demo-model", help="build the small demo model (about a minute on 2 cores)")
    demo.add_argument("out_dir", type=Path)
    demo.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--if-missing", action="store_true", help="do nothing when OUT_DIR holds this build")
    demo.add_argument(
        "--int8",
        type=Path,
        metavar="DIR",
        help="and its int8 copy in DIR, the model demo-int8 (the local fleet's second model)",
    )
    demo.add_argument(
        "--members",
        type=_member_count,
        default=0,
        help="train this many ensemble members instead (sharing one tokenizer), each --steps long",
    )
    demo.add_argument(
        "--method",
        choices=("bagging", "boosting"),
        default="bagging",
        help="members on bootstrap samples (bagging) or on examples reweighted by the previous "
        "member's loss (boosting)",
    )
    demo.set_defaults(run=_demo_model)

    manifest = commands.add_parser(
        "manifest", help="write manifest.json (size and sha256 of every file) in a folder"
    )
    manifest.add_argument("folder", type=Path)
    manifest.add_argument("--name", required=True, help="model name")
    manifest.add_argument(
        "--version", help="version label (default: the content digest's first 12 hex digits)"
    )
    manifest.set_defaults(run=_manifest)

    doctor.register(commands)
    registry_cli.register(commands)
    convert_cli.register(commands)
    ensemble_cli.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (OperatorError, FileExistsError) as exc:
        print(f"model-runtime: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
