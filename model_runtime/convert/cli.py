"""`model-runtime convert SRC --to TARGET OUT`.

The conversion imports torch (seconds), so the command imports it when it runs: every other
`model-runtime` command builds this parser too."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from model_runtime.convert import TARGETS
from model_runtime.corpus import load_corpus


def evaluation_texts(path: Path | None) -> list[str]:
    """Paragraphs of a text file (blank-line separated), or the demo corpus's held-out paragraphs."""
    if path is not None:
        return [p.strip() for p in path.read_text().split("\n\n") if p.strip()]
    return list(load_corpus().held_out)


def _convert(args: argparse.Namespace) -> int:
    from model_runtime.convert.convert import convert  # torch: see the module's doc
    from model_runtime.engine.agreement import MIN_AGREEMENT

    minimum = MIN_AGREEMENT if args.min_agreement is None else args.min_agreement
    record = convert(args.source, args.to, args.out, evaluation_texts(args.eval_text), minimum, args.name)
    print(json.dumps(record, indent=2))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("convert", help="change a model's format or precision, with recorded checks")
    parser.add_argument("source", type=Path)
    parser.add_argument("--to", required=True, choices=TARGETS)
    parser.add_argument("out", type=Path)
    parser.add_argument("--min-agreement", type=float, help="top-1 agreement needed (0-1; default 0.9)")
    parser.add_argument("--eval-text", type=Path, help="held-out text (default: the demo corpus)")
    parser.add_argument("--name", default="model", help="model name (written into a GGUF file)")
    parser.set_defaults(run=_convert)
