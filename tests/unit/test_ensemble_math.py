"""The ensemble's arithmetic against values computed by hand: the combinations of distributions, the
stacker's gate, the two stacking fits (whose optima have closed forms here), the weighted vote, the
bagging and boosting weights, and the spec's refusals."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from model_runtime.demo.members import boosted_weights, bootstrap_weights
from model_runtime.engine.base import ModelLoadError
from model_runtime.ensemble.combine import GatedPool, LinearPool, LogLinearPool, Stacker, member_features
from model_runtime.ensemble.spec import SPEC_FILE, EnsembleSpec, read_spec
from model_runtime.ensemble.stacking import fit_gate, fit_vote_weights
from model_runtime.ensemble.vote import tally

pytestmark = pytest.mark.unit

P1 = [0.7, 0.2, 0.1]
P2 = [0.1, 0.3, 0.6]


def logprobs(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows).log()


def test_average_of_probabilities() -> None:
    combined = LinearPool([3.0, 1.0])([logprobs(P1), logprobs(P2)]).exp()[0]
    # 0.75 * P1 + 0.25 * P2
    assert combined.tolist() == pytest.approx([0.55, 0.225, 0.225], abs=1e-6)


def test_average_of_log_probabilities() -> None:
    combined = LogLinearPool([3.0, 1.0])([logprobs(P1), logprobs(P2)]).exp()[0]
    geometric = [a**0.75 * b**0.25 for a, b in zip(P1, P2, strict=True)]
    assert combined.tolist() == pytest.approx([g / sum(geometric) for g in geometric], abs=1e-6)


def test_a_zero_weight_drops_the_member() -> None:
    for pool in (LinearPool([1.0, 0.0]), LogLinearPool([1.0, 0.0])):
        assert pool([logprobs(P1), logprobs(P2)]).exp()[0].tolist() == pytest.approx(P1, abs=1e-6)


def test_gated_pool_by_hand() -> None:
    def entropy(p: list[float]) -> float:
        return -sum(x * math.log(x) for x in p)

    features = [math.log(max(P1)), entropy(P1), math.log(max(P2)), entropy(P2)]
    assert member_features(logprobs(P1))[0].tolist() == pytest.approx(features[:2], abs=1e-6)
    stacker = Stacker(
        weight=torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]]),
        bias=torch.tensor([0.0, 0.5]),
        mean=torch.tensor([0.0, 0.0, 0.0, 1.0]),
        scale=torch.tensor([1.0, 1.0, 1.0, 2.0]),
    )
    gate = [features[0], 2.0 * (features[3] - 1.0) / 2.0 + 0.5]
    w1 = math.exp(gate[0]) / (math.exp(gate[0]) + math.exp(gate[1]))
    expected = [w1 * a + (1 - w1) * b for a, b in zip(P1, P2, strict=True)]
    combined = GatedPool(stacker)([logprobs(P1), logprobs(P2)]).exp()[0]
    assert combined.tolist() == pytest.approx(expected, abs=1e-6)


def test_stacker_round_trip_and_shape_check(tmp_path: Path) -> None:
    stacker = Stacker(torch.randn(2, 4), torch.randn(2), torch.randn(4), torch.rand(4) + 0.5)
    stacker.save(tmp_path / "stacker.safetensors")
    loaded = Stacker.load(tmp_path / "stacker.safetensors", members=2)
    torch.testing.assert_close(loaded.weight, stacker.weight)
    with pytest.raises(ModelLoadError, match="a stacker for 2 members and 4 features; this ensemble has 3"):
        Stacker.load(tmp_path / "stacker.safetensors", members=3)


def test_fit_gate_finds_the_closed_form_mixture() -> None:
    """Member A gives the first of two tokens 0.9, member B 0.3, and the data has it 6 times in 10. The
    best mixture gives it 0.6 (its frequency), so A's weight w solves 0.9 w + 0.3 (1 - w) = 0.6: w = 0.5,
    and the mean NLL is the data's entropy."""
    a, b = [0.9, 0.1], [0.3, 0.7]
    truth = [0] * 6 + [1] * 4
    targets = torch.tensor([[math.log(a[t]), math.log(b[t])] for t in truth])
    features = torch.stack([member_features(logprobs(a, a))[0], member_features(logprobs(b, b))[0]])
    stacker, nll = fit_gate(targets, features.expand(len(truth), 2, 2).clone(), l2=0.0)
    weights = stacker.log_weights(features.unsqueeze(0)).exp()[0]
    assert weights.tolist() == pytest.approx([0.5, 0.5], abs=1e-4)
    assert nll == pytest.approx(-(0.6 * math.log(0.6) + 0.4 * math.log(0.4)), abs=1e-6)


def test_fit_vote_weights_finds_the_closed_form() -> None:
    """Two members' vote depends on their weights' difference, and only where they disagree (items
    where they agree, or where neither is right, are left out). They disagree on 4 items and A is right
    on 3, so sigmoid(wA - wB) = 3/4: wA - wB = ln 3. From equal weights the fit moves them apart
    symmetrically (the gradient is always along (1, -1)): wA = ln(3)/2, wB = -ln(3)/2."""
    pattern = [("yes", "yes")] * 5 + [("yes", "no")] * 3 + [("no", "yes")] + [("no", "no")] * 2
    weights = fit_vote_weights([list(p) for p in pattern], ["yes"] * len(pattern), l2=0.0)
    assert weights == pytest.approx([math.log(3) / 2, -math.log(3) / 2], abs=1e-5)
    # The fitted weights make the vote prefer A where the two disagree, and B's "no" never wins.
    assert tally(["no", "yes"], weights).answer == "no"


def test_fit_vote_weights_with_three_members() -> None:
    """Three members, A and B always agreeing against C: one contest, A+B against C, won 4 times of 5,
    so sigmoid(wA + wB - wC) = 4/5, and A and B, indistinguishable, keep equal weights."""
    pattern = [("x", "x", "y")] * 5
    references = ["x"] * 4 + ["y"]
    weights = fit_vote_weights([list(p) for p in pattern], references, l2=0.0)
    assert weights[0] == pytest.approx(weights[1], abs=1e-9)
    assert 1 / (1 + math.exp(-(weights[0] + weights[1] - weights[2]))) == pytest.approx(0.8, abs=1e-6)


def test_fit_vote_weights_without_information_is_a_plain_vote() -> None:
    assert fit_vote_weights([["a", "a"], ["b", "c"]], ["a", "d"]) == [0.0, 0.0]


def test_weighted_vote_by_hand() -> None:
    weights = [0.45, 0.35, 0.2]
    # Two lighter members outvote the heaviest: 0.55 > 0.45.
    result = tally([" GNU", "General ", "General"], weights)
    assert (result.answer, result.member, result.votes) == ("General", 1, {"GNU": 0.45, "General": 0.55})
    # All differ: the heaviest wins.
    assert tally(["a", "b", "c"], weights).member == 0
    # Whitespace does not split a vote.
    assert tally(["the  Program", "the Program\n", "x"], weights).votes == {"the Program": 0.8, "x": 0.2}
    # A tie goes to the earliest member's answer.
    assert tally(["a", "b", "b"], [0.5, 0.25, 0.25]).answer == "a"


def test_bootstrap_and_boosting_weights_by_hand() -> None:
    weights = bootstrap_weights(1000, random.Random(1))
    assert sum(weights) == 1000
    assert all(w == int(w) for w in weights)
    # About 1 - 1/e of the examples appear in a bootstrap sample.
    assert 0.58 < sum(1 for w in weights if w) / 1000 < 0.68
    assert weights == bootstrap_weights(1000, random.Random(1))
    # The weighted mean loss is (1*1 + 1*2 + 2*3) / 4 = 2.25; each weight scales by loss / 2.25.
    assert boosted_weights([1.0, 1.0, 2.0], [1.0, 2.0, 3.0]) == pytest.approx([1 / 2.25, 2 / 2.25, 6 / 2.25])


def spec(**changes: object) -> dict:
    base = {
        "method": "average",
        "members": member_entries(("a", "members/a"), ("b", "registry:demo:20260101-1")),
        "weights": [1.0, 1.0],
    }
    return {**base, **changes}


def member_entries(*pairs: tuple[str, str]) -> list[dict]:
    return [{"name": name, "source": source} for name, source in pairs]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"members": member_entries(("a", "registry:demo@stable"), ("b", "b"))}, "pinned"),
        ({"members": member_entries(("a", "registry:demo"), ("b", "b"))}, "pinned"),
        ({"members": member_entries(("a", "/srv/a"), ("b", "b"))}, "inside the ensemble"),
        ({"members": member_entries(("a", "../a"), ("b", "b"))}, "inside the ensemble"),
        ({"members": member_entries(("a", "a"), ("a", "b"))}, "names must be unique"),
        ({"weights": [1.0]}, "1 given for 2 members"),
        ({"weights": [1.0, -1.0]}, "must be >= 0"),
        ({"method": "stack"}, "a stack ensemble needs its stacker"),
        ({"method": "vote", "stacker": "s.safetensors"}, "other methods take none"),
        ({"members": member_entries(("a", "a")), "weights": [1.0]}, "members: .*at least 2"),
        ({"combine": "median"}, "combine"),
    ],
)
def test_spec_refusals_name_the_field(tmp_path: Path, changes: dict, message: str) -> None:
    (tmp_path / SPEC_FILE).write_text(json.dumps(spec(**changes)))
    with pytest.raises(ModelLoadError, match=message):
        read_spec(tmp_path)


def test_spec_accepts_pinned_and_embedded_members(tmp_path: Path) -> None:
    (tmp_path / SPEC_FILE).write_text(json.dumps(spec(method="vote", weights=[2.0, -0.5])))
    loaded = read_spec(tmp_path)
    assert isinstance(loaded, EnsembleSpec)
    assert [m.registry_ref for m in loaded.members] == [None, "registry:demo:20260101-1"]
    assert loaded.names == ("a", "b")
