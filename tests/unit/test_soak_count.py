"""How the soak (harness.soak) counts what its load brought back: answered, refused with or without
Retry-After, lost; tokens per window by when each answer ended; flatness without the first and last
window."""

from __future__ import annotations

import pytest

from harness.load import Outcome
from harness.soak import SoakResult

pytestmark = pytest.mark.unit

STARTED = 100.0
WINDOW = 5.0


def counted(*outcomes: Outcome) -> SoakResult:
    result = SoakResult(seconds=30)
    for outcome in outcomes:
        result.count(outcome, STARTED, WINDOW)
    return result


def answered(after: float, tokens: int) -> Outcome:
    return Outcome(STARTED, STARTED + after, stream=False, status=200, tokens=tokens)


def test_each_outcome_lands_in_one_count() -> None:
    result = counted(
        answered(1, 16),
        Outcome(STARTED, STARTED + 1, stream=True, status=429, error="HTTP 429", retry_after=True),
        Outcome(STARTED, STARTED + 1, stream=False, status=503, error="HTTP 503"),
        Outcome(STARTED, STARTED + 1, stream=True, status=200, error="stream ended without [DONE]"),
        Outcome(STARTED, STARTED + 1, stream=False, error="ReadTimeout: timed out"),
    )
    assert (result.answered, result.refused, result.refused_without_retry_after) == (1, 2, 1)
    assert result.lost == ["stream ended without [DONE]", "ReadTimeout: timed out"]


def test_tokens_go_to_the_window_their_answer_ended_in() -> None:
    result = counted(answered(1, 16), answered(4.9, 16), answered(12, 8), answered(13, 8))
    assert result.tokens_per_window == [32, 0, 16]


def test_flatness_compares_the_halves_between_warm_up_and_the_cut_short_end() -> None:
    windows = [1, 100, 100, 150, 150, 3]
    result = counted(*(answered(i * WINDOW + 1, tokens) for i, tokens in enumerate(windows)))
    assert result.tokens_per_window == windows
    assert result.flatness == pytest.approx(1.5)
    assert counted(answered(1, 16)).flatness == 0.0
