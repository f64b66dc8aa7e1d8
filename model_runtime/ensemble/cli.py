"""`model-runtime ensemble evaluate|build`: choose an ensemble by evaluation, or write one by hand; either
can push the result to the registry, where it is served by name like any model.

The modules that do the work import torch (seconds), so each command imports them when it runs: every
other `model-runtime` command builds this parser too.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from model_runtime.config import RegistrySettings
from model_runtime.convert.cli import evaluation_texts
from model_runtime.corpus import load_corpus
from model_runtime.registry.cli import REGISTRY_ENV
from model_runtime.registry.registry import Registry, RegistryError


def _registry_settings(args: argparse.Namespace) -> RegistrySettings:
    return RegistrySettings(url=args.registry or os.environ.get(REGISTRY_ENV), cache_dir=args.cache_dir)


def _push(args: argparse.Namespace, registry: RegistrySettings) -> None:
    if not args.push:
        return
    if not registry.url:
        raise RegistryError(f"--push needs a registry: give --registry or set {REGISTRY_ENV}")
    from model_runtime.ensemble import artifact  # torch: see the module's doc

    manifest = artifact.push_ensemble(Registry.open(registry.url), args.push, args.out, args.alias)
    print(f"pushed {args.push}:{manifest['version']}" + (f" -> @{args.alias}" if args.alias else ""))


def _print_table(report: dict) -> None:
    parts = report["data"]
    print(
        f"{report['metric']} ({report['better']} is better), on the select part "
        f"({_size(parts['select'])}; weights fitted on the fit part, {_size(parts['fit'])}):"
    )
    rows = [(c["name"], c["select"]) for c in report["candidates"]]
    rows += [(c["name"], c["select"]) for c in report["combinations"]]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value:.4f}")
    best, member, gain = report["best"], report["best_member"], report["gain"]
    print(f"chosen of {report['compared']}: {best['name']}; on the test part ({_size(parts['test'])}):")
    for candidate in report["candidates"]:
        print(f"  {candidate['name'].ljust(width)}  {candidate['test']:.4f}")
    print(f"  {best['name'].ljust(width)}  {best['test']:.4f}")
    verdict = "beats" if report["beats_best_member"] else "does NOT beat"
    print(
        f"{verdict} the best member ({member['name']}): gain {gain['estimate']:+.4f}, "
        f"{gain['level']:.0%} interval [{gain['low']:+.4f}, {gain['high']:+.4f}] "
        f"(claimed when the interval is above 0: wrongly in about {gain['error_rate']:.1%} of evaluations)"
    )


def _size(part: dict) -> str:
    return ", ".join(f"{count} {what}" for what, count in part.items())


def _evaluate(args: argparse.Namespace) -> int:
    from model_runtime.ensemble import artifact, data, evaluate  # torch: see the module's doc

    split = data.Split(fit=args.split[0], select=args.split[1], seed=args.seed)  # refused before any work
    registry = _registry_settings(args)
    candidates = artifact.resolve_candidates(args.candidates, registry)
    engines = evaluate.load_candidates(candidates, args.device)
    texts = evaluation_texts(args.eval_text)
    source = str(args.eval_text) if args.eval_text else f"{load_corpus().source}, held out"
    if args.task == "generation":
        evaluation = evaluate.evaluate_generation(candidates, engines, texts, split)
    elif args.eval_items:
        evaluation = evaluate.evaluate_labels(
            candidates, engines, data.read_label_items(args.eval_items, engines[0].tokenizer), split
        )
        source = str(args.eval_items)
    else:
        context = min(e.info.max_context for e in engines)
        evaluation = evaluate.evaluate_labels(
            candidates, engines, data.label_items(texts, engines[0].tokenizer, context), split
        )
    evaluation.data["source"] = source
    report = evaluation.report()
    _print_table(report)
    best = evaluation.best
    selection = {
        "task": args.task,
        "metric": report["metric"],
        "test": evaluation.chosen_test,
        "compared": report["compared"],
        "best_member": report["best_member"],
        "gain": report["gain"],
        "evaluated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    artifact.write_ensemble(
        args.out,
        [evaluation.candidates[m] for m in best.members],
        engines[0].tokenizer,
        best.method,
        best.weights,
        best.combine,
        best.stacker,
        record={"selection": selection, "report": artifact.REPORT_FILE},
        report=report,
    )
    print(f"wrote {args.out} ({best.method}, report in {artifact.REPORT_FILE})")
    _push(args, registry)
    return 0


def _build(args: argparse.Namespace) -> int:
    # torch: see the module's doc
    from model_runtime.engine import loading
    from model_runtime.ensemble import artifact, tokenizers

    registry = _registry_settings(args)
    candidates = artifact.resolve_candidates(args.candidates, registry)
    loaded = [(c.name, loading.load_tokenizer(loading.detect_format(c.folder))) for c in candidates]
    tokenizers.require_shared_tokenizer(loaded[0][1], loaded[1:], f"member {loaded[0][0]}'s")
    weights = args.weights or [1.0] * len(candidates)
    spec = artifact.write_ensemble(
        args.out, candidates, loaded[0][1], args.method, weights, args.combine,
        record={"built_by": "model-runtime ensemble build"},
    )  # fmt: skip
    print(json.dumps(spec.model_dump(mode="json"), indent=2))
    _push(args, registry)
    return 0


def _shares(text: str) -> tuple[float, float]:
    try:
        fit, select = (float(share) for share in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give two shares, FIT,SELECT (e.g. 0.4,0.3)") from None
    return fit, select


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("candidates", nargs="+", help="model folders or registry:NAME[@ALIAS|:VERSION]")
    parser.add_argument("--out", type=Path, required=True, help="the ensemble folder to write")
    parser.add_argument("--registry", help=f"for registry: members and --push (default ${REGISTRY_ENV})")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=RegistrySettings().cache_dir,
        help="where registry members are pulled",
    )
    parser.add_argument("--push", metavar="NAME", help="push the ensemble as a new version of NAME")
    parser.add_argument("--alias", help="and promote that version to this alias")


def register(commands: argparse._SubParsersAction) -> None:
    ensemble = commands.add_parser(
        "ensemble", help="several models served as one: evaluate and choose, or build"
    )
    verbs = ensemble.add_subparsers(dest="verb", required=True)

    evaluate = verbs.add_parser(
        "evaluate", help="measure candidates and their combinations on held-out data; write the best"
    )
    _common(evaluate)
    evaluate.add_argument(
        "--task",
        choices=("generation", "labels"),
        default="generation",
        help="generation: perplexity (average, stack); labels: exact-answer accuracy (vote)",
    )
    evaluate.add_argument("--eval-text", type=Path, help="held-out text (default: the demo corpus)")
    evaluate.add_argument(
        "--eval-items",
        type=Path,
        help='labels: a JSON-lines file of {"prompt": ..., "answer": ...} (default: next-word items cut '
        "from the held-out text)",
    )
    evaluate.add_argument(
        "--split",
        type=_shares,
        default=(0.4, 0.3),
        metavar="FIT,SELECT",
        help="the shares of the data to fit weights on and to choose on; the test part has the rest "
        "(default 0.4,0.3)",
    )
    evaluate.add_argument("--seed", type=int, default=0, help="shuffles the data before the split")
    evaluate.add_argument("--device", default="auto", help="where the candidates run (auto, cpu, cuda)")
    evaluate.set_defaults(run=_evaluate)

    build = verbs.add_parser("build", help="write an ensemble of given members and weights, unevaluated")
    _common(build)
    build.add_argument("--method", choices=("average", "vote"), required=True)
    build.add_argument("--combine", choices=("probabilities", "logprobs"), default="probabilities")
    build.add_argument("--weights", type=float, nargs="+", help="one per member (default: equal)")
    build.set_defaults(run=_build)
