"""Sampling, as a property: over any logits and any temperature the API accepts (0 to 2, the tiniest
positive ones included), the sampler picks a token the distribution allows: never a suppressed EOS,
and with top_p = 0 always the most likely token; a logit bias moves exactly the tokens it names."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model_runtime.scheduler.params import SamplingParams
from model_runtime.scheduler.sampling import SampleRow, make_bias, make_generator, sample

pytestmark = pytest.mark.unit

VOCAB = 16
EOS = VOCAB - 1  # the last id: where an overflowing softmax used to land

logits_rows = st.lists(
    st.floats(-30, 30, allow_nan=False, width=32), min_size=VOCAB, max_size=VOCAB, unique=True
)
temperatures = st.one_of(
    st.floats(0, 2),
    st.sampled_from([0.0, 5e-324, 1e-300, 1e-40, 1e-8, 1e-5, 2.0]),
)


def _sample(logits: list[float], params: SamplingParams, seed: int, suppress_eos: bool) -> int:
    row = SampleRow(params, make_generator(seed), suppress_eos, None)
    tokens, _ = sample(torch.tensor([logits]), [row], [EOS])
    return tokens[0]


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(logits=logits_rows, temperature=temperatures, seed=st.integers(0, 2**32))
def test_top_p_zero_picks_the_most_likely_token(logits: list[float], temperature: float, seed: int) -> None:
    params = SamplingParams(max_tokens=1, temperature=temperature, top_p=0.0)
    assert _sample(logits, params, seed, suppress_eos=False) == max(range(VOCAB), key=logits.__getitem__)


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(
    logits=logits_rows,
    temperature=temperatures,
    top_p=st.floats(0, 1),
    seed=st.integers(0, 2**32),
)
def test_a_suppressed_eos_is_never_chosen(
    logits: list[float], temperature: float, top_p: float, seed: int
) -> None:
    params = SamplingParams(max_tokens=1, temperature=temperature, top_p=top_p)
    assert _sample(logits, params, seed, suppress_eos=True) != EOS


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(
    logits=logits_rows,
    bias=st.dictionaries(st.integers(0, VOCAB - 1), st.floats(-100, 100, width=32), max_size=VOCAB),
)
def test_logit_bias_adds_to_each_named_token(logits: list[float], bias: dict[int, float]) -> None:
    params = SamplingParams(max_tokens=1, temperature=0.0, logit_bias=tuple(bias.items()))
    row = SampleRow(params, None, False, make_bias(params.logit_bias))
    expected = torch.tensor(logits) + torch.tensor([bias.get(t, 0.0) for t in range(VOCAB)])
    assert sample(torch.tensor([logits]), [row], [EOS])[0] == [int(expected.argmax())]
