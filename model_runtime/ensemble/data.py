"""Held-out data for evaluating candidates: whole texts for perplexity, and short exact-answer items for
accuracy (a JSON-lines file of prompts and answers, or each text cut at a word, the next word the
answer). Texts and items are split three ways, at random by a seed (Split): a fit part (stackers,
mixture and vote weights are fitted there, candidates ranked for tie-breaks), a select part (every
combination compared, one chosen) and a test part (the chosen one and each member scored, once)."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from transformers import PreTrainedTokenizerBase

from model_runtime.errors import OperatorError

T = TypeVar("T")


class EvaluationError(OperatorError, ValueError):
    """Candidates or data that cannot be evaluated; the message says why."""


MIN_PROMPT_WORDS = 8
ITEMS_PER_TEXT = 2


@dataclass(frozen=True)
class Split:
    """The shares of the data for the fit and select parts (the test part has the rest), and the seed
    that shuffles the items before they are cut."""

    fit: float = 0.4
    select: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.fit < 1 and 0 < self.select < 1 and self.fit + self.select < 1):
            raise EvaluationError(
                f"--split {self.fit:g},{self.select:g}: the fit and select shares must be above 0 and "
                "leave a test part (their sum below 1)"
            )

    def indices(self, count: int) -> tuple[list[int], list[int], list[int]]:
        """The items of each part (fit, select, test), each in the data's order."""
        order = list(range(count))
        random.Random(self.seed).shuffle(order)  # noqa: S311 (a reproducible split, no secret)
        fit_end = round(count * self.fit)
        select_end = fit_end + round(count * self.select)
        parts = (order[:fit_end], order[fit_end:select_end], order[select_end:])
        if not all(parts):
            raise EvaluationError(
                f"{count} items are too few to split into fit, select and test parts "
                f"({self.fit:g}, {self.select:g} and the rest)"
            )
        return sorted(parts[0]), sorted(parts[1]), sorted(parts[2])

    def parts(self, items: Sequence[T]) -> tuple[list[T], list[T], list[T]]:
        fit, select, test = self.indices(len(items))
        return [items[i] for i in fit], [items[i] for i in select], [items[i] for i in test]

    def record(self, count: int) -> dict[str, object]:
        fit, select, test = self.indices(count)
        return {
            "seed": self.seed,
            "shares": [self.fit, self.select],
            "fit": fit,
            "select": select,
            "test": test,
        }


def token_sequences(
    texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, context: int
) -> list[list[int]]:
    """Each text followed by the end-of-text token (so ending is scored too), cut to the context."""
    end = tokenizer.eos_token or ""
    sequences = [tokenizer(text + end)["input_ids"][:context] for text in texts]
    return [s for s in sequences if len(s) >= 2]


@dataclass(frozen=True)
class LabelItem:
    prompt: str
    answer: str  # the exact answer, with its leading space (as the model writes it)
    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]


def label_item(prompt: str, answer: str, tokenizer: PreTrainedTokenizerBase) -> LabelItem:
    """The answer's tokens are those that follow the prompt's when both are tokenized together (as a
    model writes them), or, where tokenizing together merges across the boundary, the answer's own."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + answer)["input_ids"]
    if full[: len(prompt_ids)] == prompt_ids:
        answer_ids = full[len(prompt_ids) :]
    else:
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return LabelItem(prompt, answer, tuple(prompt_ids), tuple(answer_ids))


def read_label_items(path: Path, tokenizer: PreTrainedTokenizerBase) -> list[LabelItem]:
    """One JSON object per line, {"prompt": ..., "answer": ...}; EvaluationError naming a line at fault."""
    items = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            prompt, answer = record["prompt"], record["answer"]
        except (ValueError, KeyError, TypeError) as exc:
            raise EvaluationError(f"{path}:{number}: not an object with prompt and answer ({exc})") from exc
        if not (isinstance(prompt, str) and isinstance(answer, str) and prompt and answer.strip()):
            raise EvaluationError(f"{path}:{number}: prompt and answer must be non-empty text")
        items.append(label_item(prompt, answer, tokenizer))
    return items


def label_items(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, context: int) -> list[LabelItem]:
    """Up to ITEMS_PER_TEXT items per text: the text up to a word (at least MIN_PROMPT_WORDS in), and
    that word. Cut points are spread by a fixed rule, so the items are the same on every run."""
    items = []
    for i, text in enumerate(texts):
        words = text.split()
        room = len(words) - MIN_PROMPT_WORDS
        if room < 1:
            continue
        cuts = sorted({MIN_PROMPT_WORDS + (7 * i + 13 * j) % room for j in range(ITEMS_PER_TEXT)})
        for cut in cuts:
            item = label_item(" ".join(words[:cut]), " " + words[cut], tokenizer)
            if len(item.prompt_ids) + len(item.answer_ids) < context:
                items.append(item)
    return items
