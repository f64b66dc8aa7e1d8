"""`model-runtime ensemble evaluate`: measure the candidates and every combination of them on held-out
data, and choose the best combination.

- generation: perplexity of the held-out texts, teacher-forced through the engines that serve the
  models (one token per step, as in serving), each combination computed by the combiners the ensemble
  engine uses (combine.py). For every subset of two or more candidates: the average of probabilities,
  the average of log-probabilities, and the stack (the gate fitted on the validation half).
- labels: exact-answer accuracy on prompts with short answers (data.py: a JSON-lines file, or next-word
  items cut from the texts). Each candidate answers greedily with as many tokens as the reference, as a
  served member does at temperature 0; each subset votes plainly (weight 1 each) and with stacked
  weights (fitted on the validation half).

The validation half fits stackers and orders the candidates (best first: vote ties go to the better
member); every reported number, and the choice of the best, is on the test half.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from model_runtime.config import ModelSettings
from model_runtime.engine.base import Engine
from model_runtime.engine.factory import load_engine
from model_runtime.engine.loading import detect_format, load_tokenizer
from model_runtime.ensemble.artifact import Candidate
from model_runtime.ensemble.combine import (
    Combiner,
    GatedPool,
    LinearPool,
    LogLinearPool,
    Stacker,
    aligned_logprobs,
    member_features,
)
from model_runtime.ensemble.data import EvaluationError, LabelItem, halves, token_sequences
from model_runtime.ensemble.spec import Combine, Method
from model_runtime.ensemble.stacking import fit_gate, fit_vote_weights
from model_runtime.ensemble.tokenizers import require_shared_tokenizer
from model_runtime.ensemble.vote import normalize_answer, tally

MAX_CANDIDATES = 6  # every subset is evaluated: 57 of them at 6
BATCH = 32


@dataclass
class Combination:
    label: str  # average-probabilities, average-logprobs, stack, vote, stacked-vote
    method: Method
    members: tuple[int, ...]  # candidate indices, best candidate first
    weights: tuple[float, ...]
    combine: Combine = "probabilities"
    combiner: Combiner | None = None  # generation only
    stacker: Stacker | None = None
    fitted: float | None = None  # a stacker's mean NLL on the validation half it was fitted on
    test: float = math.nan

    def describe(self, names: Sequence[str]) -> dict[str, Any]:
        described: dict[str, Any] = {
            "name": f"{self.label}({'+'.join(names[m] for m in self.members)})",
            "method": self.method,
            "members": [names[m] for m in self.members],
            "weights": list(self.weights),
            "test": self.test,
        }
        if self.method == "average":
            described["combine"] = self.combine
        if self.fitted is not None:
            described["validation_fitted_loss"] = self.fitted
        return described


@dataclass
class Evaluation:
    task: str
    metric: str  # perplexity (lower is better) or accuracy
    candidates: list[Candidate]  # best first, by the validation half
    validation: list[float]  # each candidate's metric on the validation half
    test: list[float]
    combinations: list[Combination]
    data: dict[str, Any]
    items: list[dict[str, Any]] = field(default_factory=list)  # labels: each test item and its answers

    @property
    def lower_is_better(self) -> bool:
        return self.metric == "perplexity"

    def _rank(self, value: float) -> float:
        return value if self.lower_is_better else -value

    def best(self) -> Combination:
        """The best test score; on a tie the fewer members, then the simpler method (min keeps the first
        of equals, and each subset lists its methods simplest first)."""
        return min(self.combinations, key=lambda c: (self._rank(c.test), len(c.members)))

    def best_member(self) -> int:
        return min(range(len(self.candidates)), key=lambda m: self._rank(self.test[m]))

    def report(self) -> dict[str, Any]:
        names = [c.name for c in self.candidates]
        best, member = self.best(), self.best_member()
        return {
            "task": self.task,
            "metric": self.metric,
            "better": "lower" if self.lower_is_better else "higher",
            "data": self.data,
            "candidates": [
                {"name": c.name, "source": c.pinned or str(c.folder), "validation": v, "test": t}
                for c, v, t in zip(self.candidates, self.validation, self.test, strict=True)
            ],
            "combinations": [c.describe(names) for c in self.combinations],
            "best": best.describe(names),
            "best_member": {"name": names[member], "test": self.test[member]},
            "beats_best_member": self._rank(best.test) < self._rank(self.test[member]),
            "items": self.items,
        }


def subsets(count: int) -> Iterator[tuple[int, ...]]:
    for size in range(2, count + 1):
        yield from itertools.combinations(range(count), size)


def load_candidates(candidates: Sequence[Candidate], device: str = "auto") -> list[Engine]:
    """Their engines, after checking (before reading any weights) that they share one tokenizer."""
    if not 2 <= len(candidates) <= MAX_CANDIDATES:
        raise EvaluationError(f"give 2 to {MAX_CANDIDATES} candidates, not {len(candidates)}")
    tokenizers = [(c.name, load_tokenizer(detect_format(c.folder))) for c in candidates]
    require_shared_tokenizer(tokenizers[0][1], tokenizers[1:], f"candidate {tokenizers[0][0]}'s")
    return [load_engine(ModelSettings(path=str(c.folder), device=device), BATCH) for c in candidates]


def teacher_forced(
    engines: Sequence[Engine], sequences: Sequence[Sequence[int]]
) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
    """Per step, every engine's log-probabilities [n, vocab] for the next token of each live sequence,
    and those true next tokens [n]. All engines see the same sequences, fed one token per step; longest
    first, so that the sequences of a batch end at about the same step."""
    ordered = sorted(sequences, key=len, reverse=True)
    for start in range(0, len(ordered), BATCH):
        chunk = ordered[start : start + BATCH]
        live = list(range(len(chunk)))
        logits = [e.step([], [], live, [[s[0]] for s in chunk]) for e in engines]
        position = 0
        while live:
            yield aligned_logprobs(logits), torch.tensor([chunk[i][position + 1] for i in live])
            position += 1
            done = [i for i in live if len(chunk[i]) <= position + 1]
            for engine in engines:
                engine.release(done)
            live = [i for i in live if i not in done]
            if live:
                logits = [e.step(live, [chunk[i][position] for i in live], [], []) for e in engines]
        for engine in engines:
            engine.reset()


def _target(logprobs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return logprobs.gather(1, targets.unsqueeze(1)).squeeze(1)


def evaluate_generation(
    candidates: list[Candidate], engines: list[Engine], texts: Sequence[str]
) -> Evaluation:
    context = min(e.info.max_context for e in engines)
    validation, test = halves(token_sequences(texts, engines[0].tokenizer, context))
    outputs = list(teacher_forced(engines, validation))
    targets = torch.cat([torch.stack([_target(lp, t) for lp in lps], dim=1) for lps, t in outputs])
    features = torch.cat([torch.stack([member_features(lp) for lp in lps], dim=1) for lps, _ in outputs])
    del outputs
    validation_ppl = torch.exp(-targets.mean(dim=0)).tolist()
    order = sorted(range(len(engines)), key=lambda m: validation_ppl[m])
    candidates, engines = [candidates[m] for m in order], [engines[m] for m in order]
    targets, features = targets[:, order], features[:, order]

    combinations = []
    for subset in subsets(len(engines)):
        uniform = (1.0,) * len(subset)
        stacker, fitted = fit_gate(targets[:, subset], features[:, subset])
        # The stacker weighs each token; its mean weights on the validation half go in the spec's record.
        gate = tuple(stacker.log_weights(features[:, subset]).exp().mean(dim=0).tolist())
        combinations += [
            Combination("average-probabilities", "average", subset, uniform, combiner=LinearPool(uniform)),
            Combination("average-logprobs", "average", subset, uniform, "logprobs", LogLinearPool(uniform)),
            Combination("stack", "stack", subset, gate, "probabilities", GatedPool(stacker), stacker, fitted),
        ]
    nll = torch.zeros(len(engines) + len(combinations), dtype=torch.float64)
    positions = 0
    for logprobs, truth in teacher_forced(engines, test):
        for m, lp in enumerate(logprobs):
            nll[m] -= _target(lp, truth).double().sum()
        for c, combination in enumerate(combinations):
            assert combination.combiner is not None
            combined = combination.combiner([logprobs[m] for m in combination.members])
            nll[len(engines) + c] -= _target(combined, truth).double().sum()
        positions += len(truth)
    perplexities = torch.exp(nll / positions).tolist()
    for combination, value in zip(combinations, perplexities[len(engines) :], strict=True):
        combination.test = value
    data = {
        "validation": {"sequences": len(validation), "tokens": int(targets.shape[0])},
        "test": {"sequences": len(test), "tokens": positions},
    }
    return Evaluation(
        "generation", "perplexity", candidates, [validation_ppl[m] for m in order],
        perplexities[: len(engines)], combinations, data,
    )  # fmt: skip


def greedy_answers(engine: Engine, items: Sequence[LabelItem], eos: frozenset[int]) -> list[str]:
    """Each item's answer as the engine writes it at temperature 0: as many tokens as the reference
    answer has, ended early by an end-of-sequence token, decoded as the server decodes."""
    answers = []
    for start in range(0, len(items), BATCH):
        chunk = items[start : start + BATCH]
        ids = list(range(len(chunk)))
        longest = max(len(item.answer_ids) for item in chunk)
        logits = engine.step([], [], ids, [list(item.prompt_ids) for item in chunk])
        generated: list[list[int]] = [[] for _ in chunk]
        for step in range(longest):
            tokens = logits.argmax(dim=-1).tolist()
            for row, token in enumerate(tokens):
                generated[row].append(token)
            if step + 1 < longest:
                logits = engine.step(ids, tokens, [], [])
        engine.reset()
        for item, tokens in zip(chunk, generated, strict=True):
            kept = tokens[: len(item.answer_ids)]
            end = next((k for k, t in enumerate(kept) if t in eos), len(kept))
            text = engine.tokenizer.decode(
                kept[:end], skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
            answers.append(cast(str, text))  # one sequence of ids decodes to one string
    return answers


def accuracy(answers: Sequence[str], items: Sequence[LabelItem]) -> float:
    right = sum(
        normalize_answer(a) == normalize_answer(i.answer) for a, i in zip(answers, items, strict=True)
    )
    return right / len(items)


def evaluate_labels(
    candidates: list[Candidate], engines: list[Engine], items: Sequence[LabelItem]
) -> Evaluation:
    context = min(e.info.max_context for e in engines)
    too_long = [i.prompt for i in items if len(i.prompt_ids) + len(i.answer_ids) >= context]
    if too_long:
        raise EvaluationError(
            f"{len(too_long)} items do not fit the context of {context} tokens: {too_long[0]!r:.80}"
        )
    validation, test = halves(items)
    if not validation or not test:
        raise EvaluationError(
            f"{len(items)} exact-answer items are too few to fit on half and measure on half"
        )
    eos = frozenset().union(*(e.info.eos_token_ids for e in engines))
    validation_answers = [greedy_answers(e, validation, eos) for e in engines]
    validation_accuracy = [accuracy(a, validation) for a in validation_answers]
    order = sorted(range(len(engines)), key=lambda m: -validation_accuracy[m])
    candidates, engines = [candidates[m] for m in order], [engines[m] for m in order]
    validation_answers = [validation_answers[m] for m in order]
    test_answers = [greedy_answers(e, test, eos) for e in engines]
    references = [item.answer for item in validation]

    combinations = []
    for subset in subsets(len(engines)):
        ballots = [[validation_answers[m][i] for m in subset] for i in range(len(validation))]
        fitted = tuple(fit_vote_weights(ballots, references))
        combinations += [
            Combination("vote", "vote", subset, (1.0,) * len(subset)),
            Combination("stacked-vote", "vote", subset, fitted),
        ]
    for combination in combinations:
        voted = [
            tally([test_answers[m][i] for m in combination.members], combination.weights).answer
            for i in range(len(test))
        ]
        combination.test = accuracy(voted, test)
    names = [c.name for c in candidates]
    answered = [
        {
            "prompt": item.prompt,
            "answer": item.answer,
            "answer_tokens": len(item.answer_ids),
            "answers": dict(zip(names, answers, strict=True)),
        }
        for item, answers in zip(test, zip(*test_answers, strict=True), strict=True)
    ]
    data = {"validation": {"items": len(validation)}, "test": {"items": len(test)}}
    return Evaluation(
        "labels", "accuracy", candidates, [validation_accuracy[m] for m in order],
        [accuracy(a, test) for a in test_answers], combinations, data, answered,
    )  # fmt: skip
