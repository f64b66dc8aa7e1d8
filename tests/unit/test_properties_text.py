"""Stop sequences, as a property: over any completion and any stop sequences, the streamed text is
the completion up to the first stop sequence the stream meets, released in pieces that never hold
any part of it, and nothing is cut when no stop sequence occurs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from model_runtime.scheduler.text import IncrementalText

pytestmark = pytest.mark.unit

# A small alphabet, so that stop sequences often begin, overlap and complete within the text.
ALPHABET = "ab \n"
completions = st.text(ALPHABET, min_size=1, max_size=60)
stop_lists = st.lists(st.text(ALPHABET, min_size=1, max_size=8), max_size=4)


@pytest.fixture(scope="module")
def tokenizer(demo_model: Path):
    return AutoTokenizer.from_pretrained(demo_model)


@settings(
    max_examples=400,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(completion=completions, stops=stop_lists)
def test_streamed_text_stops_at_a_stop_sequence_and_never_shows_one(
    tokenizer, completion: str, stops: list[str]
) -> None:
    text = IncrementalText(tokenizer, tokenizer("Hi")["input_ids"], stops)
    pieces: list[str] = []
    for token in tokenizer(completion)["input_ids"]:
        pieces.append(text.add(token))
        if text.stopped:
            break
    pieces.append(text.flush())
    streamed = "".join(pieces)
    assert completion.startswith(streamed)
    assert not any(stop in streamed for stop in stops)
    if text.stopped:
        assert any(completion[len(streamed) :].startswith(stop) for stop in stops)
    else:
        assert streamed == completion
