from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from model_runtime.scheduler import text as text_module
from model_runtime.scheduler.text import IncrementalText
from model_runtime.server.protocol import MAX_STOP_LENGTH
from tests.support.work import LineCounter

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


def test_stop_work_per_token_does_not_grow_with_stop_length(tokenizer) -> None:
    # Longer than two of the longest stop sequences, so that a check over the text so far (or over a
    # window as long as the stop sequences) would show in the count.
    completion = " You may copy and distribute verbatim copies of this License document." * 8
    ids = tokenizer(completion)["input_ids"]
    assert len(completion) > 2 * MAX_STOP_LENGTH

    def work_for(length: int) -> int:
        # Sixteen stop sequences that each begin like some part of the text (so the matcher keeps
        # holding text back and letting it go) and never complete.
        starts = range(0, 16 * 4, 4)
        stops = tuple((completion[i : i + 12] + "#" * length)[:length] for i in starts)
        text = IncrementalText(tokenizer, tokenizer("Hi")["input_ids"], stops)
        pieces: list[str] = []
        with LineCounter(text_module.__file__).here() as counter:
            pieces.extend(text.add(t) for t in ids)
        pieces.append(text.flush())
        assert "".join(pieces) == completion
        assert not text.stopped
        return counter.lines

    assert work_for(16) == work_for(MAX_STOP_LENGTH)
