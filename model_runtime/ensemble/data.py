"""Held-out data for evaluating candidates: whole texts for perplexity, and short exact-answer items for
accuracy (each text cut at a word, the next word the answer). Texts alternate between a validation half
(stackers and vote weights are fitted there, candidates ranked for tie-breaks) and a test half (every
reported number)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from transformers import PreTrainedTokenizerBase

T = TypeVar("T")

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
            prompt, answer = " ".join(words[:cut]), " " + words[cut]
            prompt_ids = tokenizer(prompt)["input_ids"]
            full = tokenizer(prompt + answer)["input_ids"]
            # Only where the answer's tokens follow the prompt's, as they do when a model writes them.
            if full[: len(prompt_ids)] != prompt_ids or len(full) >= context:
                continue
            items.append(LabelItem(prompt, answer, tuple(prompt_ids), tuple(full[len(prompt_ids) :])))
    return items
