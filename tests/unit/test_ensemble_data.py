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
    Split,
    label_items,
    read_label_items,
    token_sequences,
)
from tests.support.ensembles import ensure_ensemble_members

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ensure_ensemble_members())


def test_a_split_is_three_disjoint_parts_fixed_by_its_seed() -> None:
    items = list(range(20))
    fit, select, test = Split(fit=0.4, select=0.3, seed=7).parts(items)
    assert (len(fit), len(select), len(test)) == (8, 6, 6)
    assert sorted(fit + select + test) == items
    assert all(part == sorted(part) for part in (fit, select, test))  # each in the data's order
    assert Split(fit=0.4, select=0.3, seed=7).parts(items) == (fit, select, test)
    assert Split(fit=0.4, select=0.3, seed=8).parts(items) != (fit, select, test)
    record = Split(fit=0.4, select=0.3, seed=7).record(20)
    assert (record["seed"], record["fit"], record["select"], record["test"]) == (7, fit, select, test)


@pytest.mark.parametrize(
    ("shares", "says"),
    [((0.6, 0.4), "leave a test part"), ((0.0, 0.5), "must be above 0"), ((0.5, -0.1), "must be above 0")],
)
def test_a_split_that_leaves_a_part_empty_is_refused(shares: tuple[float, float], says: str) -> None:
    with pytest.raises(EvaluationError, match=says):
        Split(*shares)


def test_too_few_items_for_three_parts_are_refused() -> None:
    with pytest.raises(EvaluationError, match="2 items are too few to split"):
        Split().parts([1, 2])


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
