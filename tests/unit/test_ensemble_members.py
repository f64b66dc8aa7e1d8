"""Bagging and boosting members of the demo: the example weights each member trained on are re-derived
here (the bootstrap draws, the previous member's losses re-measured), and the folder is an ensemble."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
from transformers import AutoTokenizer, LlamaForCausalLM

from model_runtime.cli import build_parser
from model_runtime.corpus import Corpus, load_corpus
from model_runtime.demo.build import Recipe, training_examples
from model_runtime.demo.members import (
    MEMBERS_RECORD,
    boosted_weights,
    bootstrap_weights,
    build_members,
    example_losses,
    is_current,
    members_fingerprint,
)
from model_runtime.engine.loading import detect_format
from model_runtime.ensemble.spec import read_spec
from tests.support.ensembles import ensure_ensemble_members, member_folders

pytestmark = pytest.mark.unit

# A model small enough to train in a second: the test is about the weights, not the prose.
TINY = replace(
    Recipe(), vocab_size=512, hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64,
    steps=3, batch_size=4, window=32,
)  # fmt: skip


def test_bagging_members_train_on_bootstrap_samples() -> None:
    members = ensure_ensemble_members()
    record = json.loads((members / MEMBERS_RECORD).read_text())
    assert record["method"] == "bagging"
    rng = random.Random(Recipe().seed)  # the draws continue from member to member
    for i, member in enumerate(record["members"]):
        weights = bootstrap_weights(record["examples"], rng)
        assert member["example_weights"] == weights
        assert member["examples_used"] == sum(1 for w in weights if w)
        assert member["recipe"]["seed"] == i
    assert record["members"][0]["example_weights"] != record["members"][1]["example_weights"]
    # One tokenizer for all, and the folder serves as their average.
    tokenizers = {(f / "tokenizer.json").read_text() for f in [members, *member_folders(members)]}
    assert len(tokenizers) == 1
    assert detect_format(members).kind == "ensemble"
    spec = read_spec(members)
    assert (spec.method, spec.combine, spec.names) == (
        "average",
        "probabilities",
        ("member-0", "member-1", "member-2"),
    )


def test_boosting_reweights_examples_by_the_previous_members_loss(tmp_path: Path) -> None:
    full = load_corpus()
    corpus = Corpus(train=full.train[:40], held_out=full.held_out[:4], source="test slice")
    record = build_members(tmp_path / "boost", 3, "boosting", TINY, corpus)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "boost")
    examples = training_examples(corpus, tokenizer)
    assert record["examples"] == len(examples)
    weights = [1.0] * len(examples)
    assert record["members"][0]["example_weights"] == weights
    for i in (1, 2):
        previous = LlamaForCausalLM.from_pretrained(tmp_path / "boost" / f"member-{i - 1}")
        weights = boosted_weights(weights, example_losses(previous, examples, TINY.window))
        assert record["members"][i]["example_weights"] == pytest.approx(weights, abs=2e-5)
    assert sum(record["members"][2]["example_weights"]) == pytest.approx(len(examples), rel=1e-4)
    # The examples really are reweighted (by little here: a model of 3 steps finds all about as hard).
    assert max(weights) > 1.01
    assert min(weights) < 0.99
    assert is_current(tmp_path / "boost", members_fingerprint(TINY, "boosting", 3))
    assert not is_current(tmp_path / "boost", members_fingerprint(TINY, "bagging", 3))


def test_an_ensemble_needs_two_members(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo-model", "out", "--members", "1"])
    assert "an ensemble needs 2 members or more" in capsys.readouterr().err
