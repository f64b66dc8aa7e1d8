"""Members for the demo's ensembles: several small Llamas that share one tokenizer (trained once), each
trained on a bootstrap sample of the corpus (bagging) or on examples reweighted by the previous
member's loss (boosting).

The result is one folder: `member-<i>/` (ordinary model folders, each with its build record and
manifest), the shared tokenizer, `ensemble.json` (their plain average: `model-runtime serve --model OUT`
serves it), and `members.json`, the build record with the example weights each member trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import LlamaForCausalLM

from model_runtime.corpus import Corpus, load_corpus
from model_runtime.demo import build
from model_runtime.demo.build import (
    Recipe,
    llama_config,
    perplexity,
    train_model,
    train_tokenizer,
    training_examples,
    write_model,
)
from model_runtime.ensemble.spec import EnsembleSpec, MemberSpec, write_spec
from model_runtime.registry.manifest import MANIFEST, build_manifest, write_manifest
from model_runtime.staging import staged

log = logging.getLogger(__name__)

Method = Literal["bagging", "boosting"]
MEMBERS_RECORD = "members.json"


def members_fingerprint(recipe: Recipe, method: Method, count: int) -> str:
    """Names a cached build: the recipe, the method, and the code that trains (a change to either
    module rebuilds)."""
    digest = hashlib.sha256(json.dumps([asdict(recipe), method, count], sort_keys=True).encode())
    for source in (Path(build.__file__ or ""), Path(__file__)):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def bootstrap_weights(count: int, rng: random.Random) -> list[float]:
    """How often each of count examples is drawn in count draws with replacement (a bootstrap sample:
    about 63% of the examples appear, some several times)."""
    weights = [0.0] * count
    for _ in range(count):
        weights[rng.randrange(count)] += 1.0
    return weights


def boosted_weights(previous: Sequence[float], losses: Sequence[float]) -> list[float]:
    """Each example's weight times its loss under the previous member, over the weighted mean loss: the
    examples that member found hard count more for the next one. The total weight is kept."""
    mean = sum(w * loss for w, loss in zip(previous, losses, strict=True)) / sum(previous)
    return [w * loss / mean for w, loss in zip(previous, losses, strict=True)]


@torch.inference_mode()
def example_losses(
    model: LlamaForCausalLM, examples: Sequence[Sequence[int]], window: int, batch: int = 64
) -> list[float]:
    """Mean next-token loss of each example over its first window tokens (0 for a one-token example)."""
    losses: list[float] = []
    for start in range(0, len(examples), batch):
        chunk = [list(e[:window]) for e in examples[start : start + batch]]
        ids = torch.zeros(len(chunk), max(len(c) for c in chunk), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, tokens in enumerate(chunk):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        valid = mask[:, 1:].float()
        losses.extend(((nll * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)).tolist())
    return losses


def is_current(out_dir: Path, fingerprint: str) -> bool:
    try:
        built = json.loads((out_dir / MEMBERS_RECORD).read_text())["fingerprint"] == fingerprint
    except (OSError, ValueError, KeyError):
        return False
    return built and (out_dir / MANIFEST).is_file()


def build_members(
    out_dir: Path, count: int, method: Method, recipe: Recipe, corpus: Corpus | None = None
) -> dict:
    """Train count members into out_dir (replaced as a whole when done). Member i uses seed
    recipe.seed + i, so bagging members differ in their sample, initialisation and batch order."""
    if count < 2:
        raise ValueError(f"an ensemble needs at least 2 members, not {count}")
    started = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    corpus = corpus or load_corpus()
    tokenizer = train_tokenizer(corpus, recipe.vocab_size)
    examples = training_examples(corpus, tokenizer)
    config = llama_config(recipe, tokenizer)
    rng = random.Random(recipe.seed)  # noqa: S311 - a bootstrap sample, not a secret
    weights = [1.0] * len(examples)
    fingerprint = members_fingerprint(recipe, method, count)
    members: list[dict[str, Any]] = []
    with staged(out_dir) as staging:
        for i in range(count):
            if method == "bagging":
                weights = bootstrap_weights(len(examples), rng)
            member_recipe = replace(recipe, seed=recipe.seed + i)
            model, loss = train_model(config, examples, member_recipe, weights)
            record = {
                "fingerprint": member_recipe.fingerprint(),
                "recipe": asdict(member_recipe),
                "method": method,
                "corpus": corpus.source,
                "examples_used": sum(1 for w in weights if w > 0),
                "final_train_loss": round(loss, 4),
                "held_out_perplexity": round(perplexity(model, tokenizer, corpus.held_out), 3),
            }
            name = f"member-{i}"
            record["version"] = write_model(staging / name, model, tokenizer, record, f"demo-{name}")[
                "version"
            ]
            members.append({"name": name, **record, "example_weights": [round(w, 6) for w in weights]})
            log.info("built ensemble member", extra={"member": name, "loss": record["final_train_loss"]})
            if method == "boosting":
                weights = boosted_weights(weights, example_losses(model, examples, recipe.window))
        tokenizer.save_pretrained(staging)
        spec = EnsembleSpec(
            method="average",
            members=tuple(MemberSpec(name=m["name"], source=m["name"]) for m in members),
            weights=(1.0,) * count,
            record={"built_by": f"model-runtime demo-model --members {count} --method {method}"},
        )
        write_spec(staging, spec)
        summary = {
            "fingerprint": fingerprint,
            "method": method,
            "members": members,
            "examples": len(examples),
            "build_seconds": round(time.perf_counter() - started, 1),
            "torch": torch.__version__,
        }
        (staging / MEMBERS_RECORD).write_text(json.dumps(summary, indent=1) + "\n")
        write_manifest(staging, build_manifest(staging, "demo-ensemble", source=f"members {fingerprint}"))
    return summary
