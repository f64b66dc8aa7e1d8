"""Output-level voting: each member answers, the answer with the most (weighted) votes wins. Torch-free:
the HTTP process tallies the votes of a vote ensemble, and the evaluator the same way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def normalize_answer(text: str) -> str:
    """Two answers are the same vote when they differ only in surrounding or repeated whitespace."""
    return " ".join(text.split())


@dataclass(frozen=True)
class Tally:
    answer: str  # the winning answer, normalized
    member: int  # the first member (in the ensemble's order) that gave it: its text is returned
    votes: dict[str, float]  # normalized answer -> summed weight, in the order first given


def tally(answers: Sequence[str], weights: Sequence[float]) -> Tally:
    """The weighted majority. Equal totals go to the answer of the earliest member, so the ensemble's
    member order (best first, when the evaluator wrote it) breaks ties."""
    votes: dict[str, float] = {}
    first: dict[str, int] = {}
    for member, (answer, weight) in enumerate(zip(answers, weights, strict=True)):
        key = normalize_answer(answer)
        votes[key] = votes.get(key, 0.0) + weight
        first.setdefault(key, member)
    winner = max(votes, key=lambda key: (votes[key], -first[key]))
    return Tally(winner, first[winner], votes)
