from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from model_runtime.scheduler.text import IncrementalText

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tokenizer(demo_model: Path):
    return AutoTokenizer.from_pretrained(demo_model)


def stream(
    tokenizer, prompt: str, completion: str, stop: tuple[str, ...] = ()
) -> tuple[list[str], IncrementalText]:
    text = IncrementalText(tokenizer, tokenizer(prompt)["input_ids"], stop)
    pieces = []
    for token in tokenizer(completion)["input_ids"]:
        pieces.append(text.add(token))
        if text.stopped:
            break
    pieces.append(text.flush())
    return pieces, text


@pytest.mark.parametrize(
    "completion",
    [
        " copy and distribute verbatim copies of this License",
        " naïve café — 日本語のテキスト 🙂 and back to ASCII",  # multi-byte characters split over tokens
        "\n\n  indented\ttext with  double  spaces",
    ],
)
def test_incremental_text_equals_full_decode(tokenizer, completion: str) -> None:
    pieces, _ = stream(tokenizer, "This License", completion)
    assert "".join(pieces) == completion
    assert all("\ufffd" not in p for p in pieces)


def test_stop_sequence_cuts_before_it_and_never_leaks(tokenizer) -> None:
    pieces, text = stream(tokenizer, "Hi", " one two three four", stop=("three",))
    assert text.stopped
    assert "".join(pieces) == " one two "
    assert not any("thr" in p for p in pieces)


def test_a_possible_stop_prefix_is_released_once_it_cannot_match(tokenizer) -> None:
    pieces, text = stream(tokenizer, "Hi", " the theory", stop=("the end",))
    assert not text.stopped
    assert "".join(pieces) == " the theory"


def test_earliest_of_several_stops_wins(tokenizer) -> None:
    pieces, _ = stream(tokenizer, "Hi", " alpha beta gamma", stop=("gamma", "beta"))
    assert "".join(pieces) == " alpha "
