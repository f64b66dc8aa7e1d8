"""Ensembles of the demo's members on this machine, every figure measured in this one run:

  perplexity   held-out perplexity of each member and of the combination `model-runtime ensemble evaluate`
               chooses (weights fitted on the fit part, the choice made on the select part), teacher-forced
               through the serving engines on the test part of the demo corpus's held-out paragraphs,
               with the chosen one's gain over the best member and its 95% bootstrap interval; once on
               all of them, once on those that do not also appear verbatim in the training part
               (licences repeat each other: 31 of the 79 do, and members memorise them differently)
  throughput   tokens/s of 16 concurrent greedy streams served over HTTP, the averaged ensemble against
               each member served alone, and their ratio

Members: `model-runtime demo-model OUT --members 3 --method bagging|boosting`, each trained as long as the
demo model (400 steps), cached under .cache/ (about 5 minutes per method the first time).
Run: .venv/bin/python bench/ensembles.py [--quick] [--methods bagging boosting]   (or -m bench.ensembles)
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/ensembles.py`, Python puts bench/ on the path rather than the repository.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import os
import statistics
import tempfile
from dataclasses import replace

import torch
from transformers import AutoTokenizer

from bench.serving import CONCURRENCY, bench_prompts, bodies, streams
from harness import REPO
from harness.load import Throughput
from harness.server import API_KEY, RuntimeProcess
from model_runtime.config import RegistrySettings
from model_runtime.corpus import load_corpus
from model_runtime.demo.build import Recipe
from model_runtime.demo.members import build_members, is_current, members_fingerprint
from model_runtime.ensemble.artifact import resolve_candidates
from model_runtime.ensemble.data import Split
from model_runtime.ensemble.evaluate import Evaluation, evaluate_generation, load_candidates

MEMBERS = 3


def members_folder(method: str, recipe: Recipe) -> Path:
    folder = REPO / ".cache" / f"bench-ensemble-{method}-{recipe.steps}"
    if not is_current(folder, members_fingerprint(recipe, method, MEMBERS)):
        print(f"training {MEMBERS} {method} members of {recipe.steps} steps into {folder} ...", flush=True)
        build_members(folder, MEMBERS, method, recipe)
    return folder


def perplexities(folder: Path) -> dict[str, Evaluation]:
    """On all held-out paragraphs, and on the novel ones only."""
    torch.set_num_threads(os.cpu_count() or 1)
    candidates = resolve_candidates([str(folder / f"member-{i}") for i in range(MEMBERS)], RegistrySettings())
    engines = load_candidates(candidates, "cpu")
    corpus = load_corpus()
    trained = set(corpus.train)
    novel = [p for p in corpus.held_out if p not in trained]
    evaluations = {
        "all held-out paragraphs": evaluate_generation(candidates, engines, corpus.held_out, Split()),
        f"the {len(novel)} held-out paragraphs not also in training": evaluate_generation(
            candidates, engines, novel, Split()
        ),
    }
    for engine in engines:
        engine.close()
    return evaluations


def throughput(folder: Path, prompts: list[str], new_tokens: int, workdir: Path) -> Throughput:
    """16 concurrent greedy streams of exactly new_tokens each, after a short warm-up; the better of two
    rounds, so that a burst of other work on the machine does not decide a ratio."""
    settings = {"scheduler": {"torch_threads": None}}  # the server's own thread choice
    server = RuntimeProcess(folder, workdir, settings, name="bench").start(timeout=600)
    try:
        extra = {"ignore_eos": True}
        streams(server.base_url, bodies("bench", prompts[:2], 4, extra), 2, API_KEY)
        rounds = [
            streams(server.base_url, bodies("bench", prompts, new_tokens, extra), CONCURRENCY, API_KEY)
            for _ in range(2)
        ]
        return max(rounds, key=lambda r: r.tokens_per_second)
    finally:
        server.stop()


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def print_perplexity(method: str, texts: str, evaluation: Evaluation) -> None:
    report = evaluation.report()
    best = report["best_member"]["test"]
    print(f"\n{method}: perplexity on {texts} ({report['data']['test']['tokens']} tokens, test part)\n")
    print(row("model", "perplexity", "/ best member"))
    print(row("---", "---", "---"))
    for member in report["candidates"]:
        print(row(member["name"], f"{member['test']:.2f}", f"{member['test'] / best:.3f}"))
    chosen, gain = report["best"], report["gain"]
    print(row(f"chosen of {report['compared']}: {chosen['name']}", f"{chosen['test']:.2f}",
              f"{chosen['test'] / best:.3f}"))  # fmt: skip
    verdict = "claimed" if gain["claimed"] else "not claimed"
    print(
        f"\ngain over the best member: {gain['estimate']:.2f} perplexity points, 95% interval "
        f"[{gain['low']:.2f}, {gain['high']:.2f}] ({verdict})"
    )


def print_throughput(method: str, ensemble: Throughput, members: list[Throughput]) -> None:
    print(f"\n{method}: served throughput, {CONCURRENCY} concurrent streams\n")
    print(row("served", "tokens/s", "ensemble / this"))
    print(row("---", "---", "---"))
    for i, result in enumerate(members):
        ratio = ensemble.tokens_per_second / result.tokens_per_second
        print(row(f"member-{i} alone", f"{result.tokens_per_second:.0f}", f"{ratio:.2f}"))
    mean = statistics.mean(r.tokens_per_second for r in members)
    ratio = f"{ensemble.tokens_per_second / mean:.2f} of the members' mean"
    print(row(f"ensemble (average of {MEMBERS})", f"{ensemble.tokens_per_second:.0f}", ratio))
    failed = ensemble.failed + sum(r.failed for r in members)
    print(f"\nfailed requests: {failed}; machine: {os.cpu_count()} CPU threads, torch {torch.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="members of 100 steps, fewer tokens (a smoke run)"
    )
    parser.add_argument(
        "--methods", nargs="+", choices=("bagging", "boosting"), default=["bagging", "boosting"]
    )
    args = parser.parse_args()
    recipe = replace(Recipe(), steps=100 if args.quick else Recipe().steps)
    prompt_count, new_tokens = (16, 16) if args.quick else (64, 96)
    for method in args.methods:
        folder = members_folder(method, recipe)
        evaluations = perplexities(folder)
        prompts = bench_prompts(AutoTokenizer.from_pretrained(folder), prompt_count)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            ensemble = throughput(folder, prompts, new_tokens, work)
            members = [throughput(folder / f"member-{i}", prompts, new_tokens, work) for i in range(MEMBERS)]
        for texts, evaluation in evaluations.items():
            print_perplexity(method, texts, evaluation)
        print_throughput(method, ensemble, members)


if __name__ == "__main__":
    main()
