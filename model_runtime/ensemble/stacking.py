"""Stacking: meta-learners fitted on the members' outputs on a validation set, producing the weights
of the combination.

- fit_gate (token level): the Stacker of combine.py (a linear layer from the members' per-token
  features to mixture weights), fitted by maximum likelihood of the validation tokens under the
  mixture, from each member's log-probability of the true token and its features.
- fit_vote_weights (labels): a conditional logistic regression. Per item, the candidate answers are the
  distinct answers the members gave, and a candidate's score is the summed weight of the members that
  gave it, so P(answer) = softmax over candidates of sum_m w_m [member m gave it]. Its prediction is
  exactly a weighted vote, so the fitted weights serve as a vote ensemble's weights.

Both are convex or nearly so and small; L-BFGS in float64 solves them to the closed forms where those
exist (the unit tests check two).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from model_runtime.ensemble.combine import Stacker
from model_runtime.ensemble.vote import normalize_answer


def _minimize(loss: Callable[[], torch.Tensor], params: list[torch.Tensor], iterations: int) -> float:
    optimizer = torch.optim.LBFGS(
        params, lr=1.0, max_iter=iterations, tolerance_grad=1e-10, tolerance_change=1e-14,
        history_size=20, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    optimizer.step(closure)
    with torch.no_grad():
        return float(loss())


def fit_gate(
    target_logprobs: torch.Tensor, features: torch.Tensor, l2: float = 1e-3, iterations: int = 200
) -> tuple[Stacker, float]:
    """target_logprobs [positions, members]: each member's log-probability of the true next token;
    features [positions, members, len(FEATURES)]. Returns the stacker and its mean validation NLL.
    l2 applies to the layer's weight only: the bias (a fixed mixture) is free."""
    targets = target_logprobs.double()
    flat = features.double().reshape(features.shape[0], -1)
    mean = flat.mean(dim=0)
    scale = flat.std(dim=0).nan_to_num(0.0).clamp(min=1e-6)
    inputs = (flat - mean) / scale
    members = targets.shape[1]
    weight = torch.zeros(members, inputs.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(members, dtype=torch.float64, requires_grad=True)

    def nll() -> torch.Tensor:
        log_weights = torch.log_softmax(inputs @ weight.T + bias, dim=-1)
        return -torch.logsumexp(log_weights + targets, dim=-1).mean() + l2 * weight.pow(2).sum()

    _minimize(nll, [weight, bias], iterations)
    stacker = Stacker(weight.detach().float(), bias.detach().float(), mean.float(), scale.float())
    with torch.no_grad():
        fitted = -torch.logsumexp(stacker.log_weights(features.float()) + target_logprobs, dim=-1).mean()
    return stacker, float(fitted)


def vote_design(
    answers: Sequence[Sequence[str]], references: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The items that carry information, padded to the most candidates any has: X [items, candidates,
    members] with X[i, c, m] = 1 when member m gave candidate c to item i, which of the candidates are
    real [items, candidates], and the index of the reference [items]. Items where no member gave the
    reference, or all gave the same answer, say nothing about the weights and are left out (None: no
    item is left)."""
    rows = []
    for item, reference in zip(answers, references, strict=True):
        normalized = [normalize_answer(a) for a in item]
        candidates = list(dict.fromkeys(normalized))
        target = normalize_answer(reference)
        if len(candidates) < 2 or target not in candidates:
            continue
        rows.append(([[float(a == c) for a in normalized] for c in candidates], candidates.index(target)))
    if not rows:
        return None
    widest, members = max(len(x) for x, _ in rows), len(answers[0])
    design = torch.zeros(len(rows), widest, members, dtype=torch.float64)
    real = torch.zeros(len(rows), widest, dtype=torch.bool)
    for i, (x, _) in enumerate(rows):
        design[i, : len(x)] = torch.tensor(x, dtype=torch.float64)
        real[i, : len(x)] = True
    return design, real, torch.tensor([y for _, y in rows])


def fit_vote_weights(
    answers: Sequence[Sequence[str]], references: Sequence[str], l2: float = 1e-2, iterations: int = 200
) -> list[float]:
    """answers[i][m]: member m's answer to item i. Returns one weight per member; all zero (a plain
    vote with ties to the first member) when no item carries information."""
    members = len(answers[0])
    weights = torch.zeros(members, dtype=torch.float64, requires_grad=True)
    found = vote_design(answers, references)
    if found is None:
        return [0.0] * members
    design, real, chosen = found

    def nll() -> torch.Tensor:
        scores = (design @ weights).masked_fill(~real, -torch.inf)
        picked = torch.log_softmax(scores, dim=1).gather(1, chosen.unsqueeze(1))
        return -picked.mean() + l2 * weights.pow(2).sum()

    _minimize(nll, [weights], iterations)
    return [float(w) for w in weights.detach()]
