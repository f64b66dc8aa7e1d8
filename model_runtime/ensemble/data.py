"""Held-out data for evaluating candidates: whole texts for perplexity, and short exact-answer items for
accuracy (a JSON-lines file of prompts and answers, or each text cut at a word, the next word the
answer). Texts and items alternate between a validation half (stackers and vote weights are fitted
there, candidates ranked for tie-breaks) and a test half (every reported number)."""

from __future__ import annotations

import json
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


def halves(items: Sequence[T]) -> tuple[list[T], list[T]]:
    """(validation, test): alternate items, so both halves sample every part of the data."""
    return list(items[0::2]), list(items[1::2])


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
