"""Evaluation data: texts as token sequences, next-word items cut from texts, and labelled items read
from JSON lines, each answer's tokens being those a model writes after the prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from model_runtime.corpus import load_corpus
from model_runtime.ensemble.data import (
    EvaluationError,
    halves,
    label_items,
    read_label_items,
    token_sequences,
)
from tests.support.ensembles import ensure_ensemble_members

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ensure_ensemble_members())


def test_halves_alternate() -> None:
    assert halves("abcde") == (["a", "c", "e"], ["b", "d"])


def test_token_sequences_end_with_the_end_of_text(tokenizer) -> None:
    sequences = token_sequences(["You may copy it.", "x" * 3000], tokenizer, context=64)
    assert sequences[0] == tokenizer("You may copy it.")["input_ids"] + [tokenizer.eos_token_id]
    assert len(sequences[1]) == 64


def test_next_word_items(tokenizer) -> None:
    texts = list(load_corpus().held_out[:10])
    items = label_items(texts, tokenizer, context=512)
    assert items == label_items(texts, tokenizer, context=512)  # the same items on every run
    assert 10 < len(items) <= 20
    for item in items:
        text = next(t for t in texts if t.startswith(item.prompt + item.answer))
        assert len(item.prompt.split()) >= 8
        assert item.answer == " " + text[len(item.prompt) :].split()[0]
        assert list(item.prompt_ids) == tokenizer(item.prompt)["input_ids"]
        assert tokenizer.decode(list(item.answer_ids)) == item.answer


def test_labelled_items_from_json_lines(tokenizer, tmp_path: Path) -> None:
    lines = [
        {"prompt": "This License applies to any", "answer": " program"},
        {"prompt": "GNU General Public Lic", "answer": "ense"},  # tokenized together, the two merge
    ]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    first, second = read_label_items(path, tokenizer)
    assert first.answer_ids == tuple(tokenizer(" program")["input_ids"])
    joined = tokenizer("GNU General Public License")["input_ids"]
    assert joined[: len(second.prompt_ids)] != list(second.prompt_ids)
    assert second.answer_ids == tuple(tokenizer("ense", add_special_tokens=False)["input_ids"])
    path.write_text(json.dumps(lines[0]) + '\n{"prompt": "x"}\n')
    with pytest.raises(EvaluationError, match=r"items.jsonl:2: not an object with prompt and answer"):
        read_label_items(path, tokenizer)
    path.write_text('{"prompt": "x", "answer": " "}\n')
    with pytest.raises(EvaluationError, match=r"items.jsonl:1: prompt and answer must be non-empty"):
        read_label_items(path, tokenizer)
