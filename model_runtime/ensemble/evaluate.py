"""`model-runtime ensemble evaluate`: measure the candidates and every combination of them on held-out
data, choose one honestly, and say how sure the choice is.

The data is split three ways (data.Split, seeded and recorded in the report): stackers and weights are
fitted on the fit part, every combination is compared on the select part and one chosen there, and only
the chosen one and each member are scored on the test part, once. The chosen one's gain over the best
member (best on the select part) comes with a bootstrap interval over the test items
(selection.py); "beats the best member" is claimed only when that interval lies above zero.

- generation: perplexity of the held-out texts, teacher-forced through the engines that serve the
  models (one token per step, as in serving), each combination computed by the combiners the ensemble
  engine uses (combine.py). For every subset of two or more candidates: the average of probabilities
  (equal weights, and mixture weights fitted by EM), the average of log-probabilities, and the stack
  (the gate).
- labels: exact-answer accuracy on prompts with short answers (data.py: a JSON-lines file, or next-word
  items cut from the texts). Each candidate answers greedily with as many tokens as the reference, as a
  served member does at temperature 0; each subset votes plainly (weight 1 each) and with fitted
  weights.
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
from model_runtime.ensemble.data import EvaluationError, LabelItem, Split, token_sequences
from model_runtime.ensemble.selection import Gain, Scores, bootstrap_gain, mixture_weights
from model_runtime.ensemble.spec import Combine, Method
from model_runtime.ensemble.stacking import fit_gate, fit_vote_weights
from model_runtime.ensemble.tokenizers import require_shared_tokenizer
from model_runtime.ensemble.vote import normalize_answer, tally

MAX_CANDIDATES = 6  # every subset is evaluated: 57 of them at 6
BATCH = 32


@dataclass
class Combination:
    label: str  # average-probabilities, average-logprobs, mixture, stack, vote, fitted-vote
    method: Method
    members: tuple[int, ...]  # candidate indices, best candidate first
    weights: tuple[float, ...]
    combine: Combine = "probabilities"
    combiner: Combiner | None = None  # generation only
    stacker: Stacker | None = None
    fitted: float | None = None  # a stacker's mean NLL on the fit part it was fitted on
    select: float = math.nan

    def describe(self, names: Sequence[str]) -> dict[str, Any]:
        described: dict[str, Any] = {
            "name": f"{self.label}({'+'.join(names[m] for m in self.members)})",
            "method": self.method,
            "members": [names[m] for m in self.members],
            "weights": list(self.weights),
            "select": self.select,
        }
        if self.method == "average":
            described["combine"] = self.combine
        if self.fitted is not None:
            described["fit_loss"] = self.fitted
        return described


@dataclass
class Evaluation:
    task: str
    metric: str  # perplexity (lower is better) or accuracy
    candidates: list[Candidate]  # best first, by the fit part
    fit: list[float]  # each candidate's metric on the fit part
    select: list[float]
    combinations: list[Combination]  # each with its metric on the select part
    chosen: int  # the combination chosen on the select part
    best_member: int  # the candidate best on the select part
    test: list[float]  # each candidate's metric on the test part
    chosen_test: float
    gain: Gain  # the chosen one's over the best member, on the test part
    data: dict[str, Any]
    items: list[dict[str, Any]] = field(default_factory=list)  # labels: each test item and its answers

    @property
    def best(self) -> Combination:
        return self.combinations[self.chosen]

    def report(self) -> dict[str, Any]:
        names = [c.name for c in self.candidates]
        member = self.best_member
        return {
            "task": self.task,
            "metric": self.metric,
            "better": "lower" if self.metric == "perplexity" else "higher",
            "data": self.data,
            "candidates": [
                {"name": c.name, "source": c.pinned or str(c.folder), "fit": f, "select": s, "test": t}
                for c, f, s, t in zip(self.candidates, self.fit, self.select, self.test, strict=True)
            ],
            "combinations": [c.describe(names) for c in self.combinations],
            "compared": len(self.combinations),
            "best": {**self.best.describe(names), "test": self.chosen_test},
            "best_member": {"name": names[member], "select": self.select[member], "test": self.test[member]},
            "gain": self.gain.record(),
            "beats_best_member": self.gain.claimed,
            "items": self.items,
        }


def rank(metric: str, value: float) -> float:
    return value if metric == "perplexity" else -value


def choose(metric: str, combinations: Sequence[Combination], members: Sequence[float]) -> tuple[int, int]:
    """(the combination, the member) best on the select part. On a tie the fewer members, then the
    simpler method (min keeps the first of equals, and each subset lists its methods simplest first)."""
    chosen = min(range(len(combinations)), key=lambda c: (rank(metric, combinations[c].select),
                                                          len(combinations[c].members)))  # fmt: skip
    return chosen, min(range(len(members)), key=lambda m: rank(metric, members[m]))


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
) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]]:
    """Per step, every engine's log-probabilities [n, vocab] for the next token of each live sequence,
    those true next tokens [n] and the sequences' indices [n]. All engines see the same sequences, fed
    one token per step; longest first, so that the sequences of a batch end at about the same step."""
    ordered = sorted(range(len(sequences)), key=lambda i: len(sequences[i]), reverse=True)
    for start in range(0, len(ordered), BATCH):
        rows = ordered[start : start + BATCH]
        chunk = [sequences[i] for i in rows]
        live = list(range(len(chunk)))
        logits = [e.step([], [], live, [[s[0]] for s in chunk]) for e in engines]
        position = 0
        while live:
            yield (
                aligned_logprobs(logits),
                torch.tensor([chunk[i][position + 1] for i in live]),
                torch.tensor([rows[i] for i in live]),
            )
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


def sequence_nll(
    engines: Sequence[Engine], sequences: Sequence[Sequence[int]], combinations: Sequence[Combination]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each sequence's summed negative log-likelihood under each member [members, sequences] and each
    combination [combinations, sequences], and its scored tokens [sequences]."""
    members = torch.zeros(len(engines), len(sequences), dtype=torch.float64)
    combined = torch.zeros(len(combinations), len(sequences), dtype=torch.float64)
    tokens = torch.zeros(len(sequences), dtype=torch.float64)
    for logprobs, truth, rows in teacher_forced(engines, sequences):
        for m, lp in enumerate(logprobs):
            members[m].index_add_(0, rows, -_target(lp, truth).double())
        for c, combination in enumerate(combinations):
            assert combination.combiner is not None
            mixed = combination.combiner([logprobs[m] for m in combination.members])
            combined[c].index_add_(0, rows, -_target(mixed, truth).double())
        tokens.index_add_(0, rows, torch.ones(len(rows), dtype=torch.float64))
    return members, combined, tokens


def perplexity(nll: torch.Tensor, tokens: torch.Tensor) -> float:
    return math.exp(float(nll.sum() / tokens.sum()))


def evaluate_generation(
    candidates: list[Candidate], engines: list[Engine], texts: Sequence[str], split: Split
) -> Evaluation:
    context = min(e.info.max_context for e in engines)
    sequences = token_sequences(texts, engines[0].tokenizer, context)
    fit, select, test = split.parts(sequences)
    outputs = list(teacher_forced(engines, fit))
    targets = torch.cat([torch.stack([_target(lp, t) for lp in lps], dim=1) for lps, t, _ in outputs])
    features = torch.cat([torch.stack([member_features(lp) for lp in lps], dim=1) for lps, _, _ in outputs])
    del outputs
    fit_ppl = torch.exp(-targets.mean(dim=0)).tolist()
    order = sorted(range(len(engines)), key=lambda m: fit_ppl[m])
    candidates, engines = [candidates[m] for m in order], [engines[m] for m in order]
    targets, features = targets[:, order], features[:, order]

    combinations = []
    for subset in subsets(len(engines)):
        uniform = (1.0,) * len(subset)
        mixture = mixture_weights(targets[:, subset])
        stacker, fitted = fit_gate(targets[:, subset], features[:, subset])
        # The stacker weighs each token; its mean weights on the fit part go in the spec's record.
        gate = tuple(stacker.log_weights(features[:, subset]).exp().mean(dim=0).tolist())
        combinations += [
            Combination("average-probabilities", "average", subset, uniform, combiner=LinearPool(uniform)),
            Combination("average-logprobs", "average", subset, uniform, "logprobs", LogLinearPool(uniform)),
            Combination("mixture", "average", subset, mixture, combiner=LinearPool(mixture)),
            Combination("stack", "stack", subset, gate, "probabilities", GatedPool(stacker), stacker, fitted),
        ]
    members_nll, combined_nll, tokens = sequence_nll(engines, select, combinations)
    select_ppl = [perplexity(nll, tokens) for nll in members_nll]
    for combination, nll in zip(combinations, combined_nll, strict=True):
        combination.select = perplexity(nll, tokens)
    chosen, member = choose("perplexity", combinations, select_ppl)
    members_nll, chosen_nll, test_tokens = sequence_nll(engines, test, [combinations[chosen]])
    counts = test_tokens.tolist()
    gain = bootstrap_gain(
        Scores.of("perplexity", chosen_nll[0].tolist(), counts),
        Scores.of("perplexity", members_nll[member].tolist(), counts),
        seed=split.seed,
    )
    data = {
        "split": split.record(len(sequences)),
        "fit": {"sequences": len(fit), "tokens": int(targets.shape[0])},
        "select": {"sequences": len(select), "tokens": int(tokens.sum())},
        "test": {"sequences": len(test), "tokens": int(test_tokens.sum())},
    }
    return Evaluation(
        "generation", "perplexity", candidates, [fit_ppl[m] for m in order], select_ppl, combinations,
        chosen, member, [perplexity(nll, test_tokens) for nll in members_nll],
        perplexity(chosen_nll[0], test_tokens), gain, data,
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


def right(answers: Sequence[str], items: Sequence[LabelItem]) -> list[float]:
    """1.0 for each right answer, 0.0 for each wrong one."""
    return [
        float(normalize_answer(a) == normalize_answer(i.answer)) for a, i in zip(answers, items, strict=True)
    ]


def accuracy(answers: Sequence[str], items: Sequence[LabelItem]) -> float:
    return sum(right(answers, items)) / len(items)


def voted(answers: Sequence[Sequence[str]], combination: Combination) -> list[str]:
    """answers[m][i]: member m's answer to item i -> the combination's answer to each item."""
    return [
        tally([answers[m][i] for m in combination.members], combination.weights).answer
        for i in range(len(answers[0]))
    ]


@dataclass
class VoteChoice:
    combinations: list[Combination]  # each with its accuracy on the select part
    chosen: int
    best_member: int
    select: list[float]  # each member's accuracy on the select part
    test: list[float]
    chosen_test: float
    gain: Gain


def choose_vote(
    answers: Sequence[Sequence[Sequence[str]]], parts: Sequence[Sequence[LabelItem]], seed: int
) -> VoteChoice:
    """answers[p][m][i]: member m's answer to item i of part p (fit, select, test), the members best
    first by the fit part. Fits each subset's vote weights on the fit part, chooses on the select part,
    scores the chosen vote and each member on the test part."""
    (fit_answers, select_answers, test_answers), (fit, select, test) = answers, parts
    combinations = []
    for subset in subsets(len(fit_answers)):
        ballots = [[fit_answers[m][i] for m in subset] for i in range(len(fit))]
        fitted = tuple(fit_vote_weights(ballots, [item.answer for item in fit]))
        combinations += [
            Combination("vote", "vote", subset, (1.0,) * len(subset)),
            Combination("fitted-vote", "vote", subset, fitted),
        ]
    select_accuracy = [accuracy(a, select) for a in select_answers]
    for combination in combinations:
        combination.select = accuracy(voted(select_answers, combination), select)
    chosen, member = choose("accuracy", combinations, select_accuracy)
    chosen_right = right(voted(test_answers, combinations[chosen]), test)
    ones = [1.0] * len(test)
    gain = bootstrap_gain(
        Scores.of("accuracy", chosen_right, ones),
        Scores.of("accuracy", right(test_answers[member], test), ones),
        seed=seed,
    )
    return VoteChoice(
        combinations, chosen, member, select_accuracy, [accuracy(a, test) for a in test_answers],
        sum(chosen_right) / len(test), gain,
    )  # fmt: skip


def evaluate_labels(
    candidates: list[Candidate], engines: list[Engine], items: Sequence[LabelItem], split: Split
) -> Evaluation:
    context = min(e.info.max_context for e in engines)
    too_long = [i.prompt for i in items if len(i.prompt_ids) + len(i.answer_ids) >= context]
    if too_long:
        raise EvaluationError(
            f"{len(too_long)} items do not fit the context of {context} tokens: {too_long[0]!r:.80}"
        )
    parts = split.parts(items)
    eos = frozenset().union(*(e.info.eos_token_ids for e in engines))
    fit_answers = [greedy_answers(e, parts[0], eos) for e in engines]
    fit_accuracy = [accuracy(a, parts[0]) for a in fit_answers]
    order = sorted(range(len(engines)), key=lambda m: -fit_accuracy[m])
    candidates, engines = [candidates[m] for m in order], [engines[m] for m in order]
    answers = [[fit_answers[m] for m in order]]
    answers += [[greedy_answers(e, part, eos) for e in engines] for part in parts[1:]]
    choice = choose_vote(answers, parts, split.seed)
    names = [c.name for c in candidates]
    answered = [
        {
            "prompt": item.prompt,
            "answer": item.answer,
            "answer_tokens": len(item.answer_ids),
            "answers": dict(zip(names, given, strict=True)),
        }
        for item, given in zip(parts[2], zip(*answers[2], strict=True), strict=True)
    ]
    data = {
        "split": split.record(len(items)),
        **{name: {"items": len(part)} for name, part in zip(("fit", "select", "test"), parts, strict=True)},
    }
    return Evaluation(
        "labels", "accuracy", candidates, [fit_accuracy[m] for m in order], choice.select,
        choice.combinations, choice.chosen, choice.best_member, choice.test, choice.chosen_test,
        choice.gain, data, answered,
    )  # fmt: skip
