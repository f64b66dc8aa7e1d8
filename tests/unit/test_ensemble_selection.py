"""Honest selection: mixture weights by EM, the bootstrap interval of a gain, and the claim's error
rate on a null case, where no vote of members that guess can really beat the best of them."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from model_runtime.cli import main
from model_runtime.ensemble.data import LabelItem, Split
from model_runtime.ensemble.evaluate import choose_vote
from model_runtime.ensemble.selection import Scores, bootstrap_gain, mixture_weights

pytestmark = pytest.mark.unit


def test_em_finds_the_weights_of_a_mixture_that_generated_the_data() -> None:
    """Tokens drawn from member 0's distribution with probability 0.7, else member 1's: EM on the
    members' probabilities of those tokens recovers about 0.7 and 0.3."""
    generator = torch.Generator().manual_seed(0)
    vocab, positions = 50, 20000
    members = torch.log_softmax(3 * torch.randn(2, positions, vocab, generator=generator), dim=-1)
    source = (torch.rand(positions, generator=generator) > 0.7).long()  # 0 with probability 0.7
    tokens = torch.multinomial(members[source, torch.arange(positions)].exp(), 1, generator=generator)
    targets = members.gather(2, tokens.T.expand(2, positions).unsqueeze(2)).squeeze(2).T  # [positions, 2]
    weights = mixture_weights(targets)
    assert sum(weights) == pytest.approx(1.0)
    assert weights[0] == pytest.approx(0.7, abs=0.02)


def test_em_never_lowers_the_likelihood_below_equal_weights() -> None:
    targets = torch.log(torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.3], [0.7, 0.05]]))

    def loglik(weights: tuple[float, ...]) -> float:
        return float(torch.logsumexp(targets + torch.tensor(weights).log(), dim=1).sum())

    assert loglik(mixture_weights(targets)) >= loglik((0.5, 0.5))


def test_a_clear_gain_has_an_interval_above_zero_and_none_an_interval_around_it() -> None:
    better = Scores.of("accuracy", [1.0] * 80 + [0.0] * 20, [1.0] * 100)
    worse = Scores.of("accuracy", [1.0] * 50 + [0.0] * 50, [1.0] * 100)
    gain = bootstrap_gain(better, worse)
    assert gain.estimate == pytest.approx(0.3)
    assert 0 < gain.low < 0.3 < gain.high
    assert gain.claimed
    same = bootstrap_gain(worse, worse)
    assert (same.estimate, same.low, same.high, same.claimed) == (0.0, 0.0, 0.0, False)


def test_a_perplexity_gain_is_perplexity_points_fewer() -> None:
    tokens = [10.0] * 30
    chosen = Scores.of("perplexity", [20.0] * 30, tokens)  # exp(2)
    member = Scores.of("perplexity", [25.0] * 30, tokens)  # exp(2.5)
    gain = bootstrap_gain(chosen, member)
    assert gain.estimate == pytest.approx(torch.tensor(2.5).exp() - torch.tensor(2.0).exp())
    assert gain.claimed


LABELS = ["red", "green", "blue", "grey"]


def guesses(rng: random.Random, members: int, items: int) -> list[list[str]]:
    return [[f" {rng.choice(LABELS)}" for _ in range(items)] for _ in range(members)]


def test_on_random_labels_a_gain_is_claimed_no_more_often_than_the_stated_error_rate() -> None:
    """Members that guess, on labels drawn at random: every member and every vote is at chance, so any
    claimed gain is a false one. Over many seeded evaluations (a new split, new labels and new guesses
    each), the evaluation claims a gain in no more of them than the error rate it states; the point
    estimate alone (the claim before the interval) would have claimed one in many more."""
    runs, members, count = 120, 3, 150
    claimed, by_estimate, error_rates = 0, 0, set()
    for seed in range(runs):
        rng = random.Random(seed)
        items = [LabelItem(f"q{i}", f" {rng.choice(LABELS)}", (i,), (i,)) for i in range(count)]
        parts = Split(seed=seed).parts(items)
        answers = [guesses(rng, members, len(part)) for part in parts]
        choice = choose_vote(answers, parts, seed)
        claimed += choice.gain.claimed
        by_estimate += choice.gain.estimate > 0
        error_rates.add(choice.gain.error_rate)
    (error_rate,) = error_rates
    assert claimed <= error_rate * runs, f"{claimed} of {runs} claimed a gain"
    assert by_estimate > 2 * error_rate * runs, by_estimate


def test_members_that_know_different_things_make_a_vote_that_is_claimed_better() -> None:
    """Each of three members knows the answer to a different 60% of the items and guesses on the rest:
    the vote is right where two know, which is more often than any one member; the claim holds."""
    rng = random.Random(0)
    count = 300
    items = [LabelItem(f"q{i}", f" {rng.choice(LABELS)}", (i,), (i,)) for i in range(count)]
    knows = [set(rng.sample(range(count), int(0.6 * count))) for _ in range(3)]
    split = Split(seed=0)
    indices = split.indices(count)
    parts = split.parts(items)
    answers = [
        [[items[i].answer if i in knows[m] else f" {rng.choice(LABELS)}" for i in part] for m in range(3)]
        for part in indices
    ]
    choice = choose_vote(answers, parts, 0)
    assert choice.gain.claimed, choice.gain
    assert choice.chosen_test > max(choice.test)


@pytest.mark.parametrize(
    ("split", "says"),
    [
        ("0.6,0.5", "--split 0.6,0.5: the fit and select shares must be above 0 and leave a test part"),
        ("half", "'half': give two shares, FIT,SELECT"),
    ],
)
def test_a_split_without_a_test_part_is_refused_before_any_model_is_read(
    split: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command = ["ensemble", "evaluate", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "o")]
    try:
        code = main([*command, "--split", split])
    except SystemExit as exit:  # argparse's refusal of a value it cannot read
        code = exit.code
    assert code == 2
    assert says in capsys.readouterr().err
