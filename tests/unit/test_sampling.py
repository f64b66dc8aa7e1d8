from __future__ import annotations

import pytest
import torch

from model_runtime.scheduler.params import SamplingParams
from model_runtime.scheduler.sampling import SampleRow, make_generator, sample

pytestmark = pytest.mark.unit


def row(**params: object) -> SampleRow:
    p = SamplingParams(max_tokens=8, **params)
    return SampleRow(p, make_generator(p.seed), suppress_eos=False)


def test_greedy_is_argmax() -> None:
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 1.0, 0.0]])
    tokens, _ = sample(logits, [row(temperature=0.0), row(temperature=0.0)], eos_ids=[])
    assert tokens == [1, 0]


def test_seeded_row_draws_the_same_whatever_shares_its_batch() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 50)
    alone = [sample(logits, [row(temperature=1.0, seed=7)], [])[0][0] for _ in range(1)]
    batch_logits = torch.cat([torch.randn(3, 50), logits])
    rows = [
        row(temperature=1.0),
        row(temperature=0.5, seed=3),
        row(temperature=0.0),
        row(temperature=1.0, seed=7),
    ]
    in_batch = sample(batch_logits, rows, [])[0][3]
    assert alone == [in_batch]


def test_sampling_follows_the_distribution() -> None:
    probs = torch.tensor([0.5, 0.3, 0.2])
    logits = probs.log().expand(4000, 3)
    rows = [row(temperature=1.0, seed=i) for i in range(4000)]
    tokens, _ = sample(logits, rows, [])
    counts = torch.bincount(torch.tensor(tokens), minlength=3).float() / 4000
    torch.testing.assert_close(counts, probs, atol=0.03, rtol=0)


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().expand(2000, 4)
    tokens, _ = sample(logits, [row(temperature=1.0, top_p=0.7, seed=i) for i in range(2000)], [])
    assert set(tokens) == {0, 1}  # 0.5 < 0.7 needs the second; 0.8 >= 0.7 stops there
    assert sample(logits[:1], [row(temperature=1.0, top_p=0.0, seed=1)], [])[0] == [0]


def test_temperature_divides_logits() -> None:
    logits = torch.tensor([1.0, 0.9, 0.0]).expand(2000, 3)
    tokens, _ = sample(logits, [row(temperature=0.05, seed=i) for i in range(2000)], [])
    expected = torch.softmax(torch.tensor([1.0, 0.9, 0.0]) / 0.05, dim=0)[0].item()  # 0.881
    assert tokens.count(0) / 2000 == pytest.approx(expected, abs=0.03)


def test_eos_suppressed_until_min_tokens() -> None:
    logits = torch.tensor([[0.0, 10.0, 1.0]])
    suppressed = SampleRow(SamplingParams(max_tokens=4, temperature=0.0), None, suppress_eos=True)
    assert sample(logits, [suppressed], eos_ids=[1])[0] == [2]
    assert sample(logits, [row(temperature=0.0)], eos_ids=[1])[0] == [1]


def test_penalties_and_bias_follow_openai_definitions() -> None:
    logits = torch.tensor([[2.0, 1.9, 0.0]])
    params = SamplingParams(max_tokens=4, temperature=0.0, frequency_penalty=0.1, presence_penalty=0.05)
    # Token 0 seen twice: 2.0 - 2*0.1 - 0.05 = 1.75 < 1.9, so token 1 wins.
    assert sample(logits, [SampleRow(params, None, False, output=[0, 0])], [])[0] == [1]
    biased = SamplingParams(max_tokens=4, temperature=0.0, logit_bias=((2, 5.0),))
    assert sample(logits, [SampleRow(biased, None, False)], [])[0] == [2]


def test_logprobs_of_chosen_and_top_tokens() -> None:
    probs = torch.tensor([[0.6, 0.3, 0.1]])
    tokens, logprobs = sample(probs.log(), [row(temperature=0.0, logprobs=2)], [])
    entry = logprobs[0]
    assert entry is not None
    assert entry.token == tokens[0] == 0
    assert entry.logprob == pytest.approx(torch.tensor(0.6).log().item(), abs=1e-5)
    assert [t for t, _ in entry.top] == [0, 1]
    assert sample(probs.log(), [row(temperature=0.0)], [])[1] == [None]
