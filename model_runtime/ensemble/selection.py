"""Choosing an ensemble honestly, and saying how sure the choice is.

Held-out data is split three ways (data.Split): weights and stackers are fitted on the fit part, every
combination is compared on the select part, and only the chosen one (with each member) is scored on the
test part, once. A winner picked and scored on the same data is optimistic by construction: with dozens
of combinations, one of them beats the best member by chance alone.

- mixture_weights: the weights of a linear pool (average of probabilities) by EM on the mixture's
  log-likelihood of the fit part's tokens. Each step cannot lower that likelihood, and the weights stay
  a distribution over the members: a mixture of a few members has nothing to overfit the select part.
- Scores: a metric kept per item (a text's summed negative log-likelihood and its token count, or an
  answer's correctness), so that it can be resampled by item.
- bootstrap_gain: the chosen combination's gain over the best member on the test part, with a
  percentile interval from resampling the test items (the same resample for both, since they answer the
  same items). A gain is claimed only when the interval's lower end is above zero; when there is no
  real gain, that happens in about (1 - level) / 2 of evaluations, the error rate the report states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LEVEL = 0.95
RESAMPLES = 2000


def mixture_weights(
    target_logprobs: torch.Tensor, iterations: int = 500, tolerance: float = 1e-9
) -> tuple[float, ...]:
    """target_logprobs [positions, members]: each member's log-probability of the true next token.
    The members' weights in the mixture that makes those tokens likeliest (EM from equal weights)."""
    targets = target_logprobs.double()
    log_weights = torch.full((targets.shape[1],), -math.log(targets.shape[1]), dtype=torch.float64)
    for _ in range(iterations):
        # E: each member's share of each token's probability; M: the weights are the mean shares.
        shares = torch.softmax(log_weights + targets, dim=1)
        updated = shares.mean(dim=0).clamp(min=1e-300).log()
        converged = (updated.exp() - log_weights.exp()).abs().max() < tolerance
        log_weights = updated
        if converged:
            break
    return tuple(log_weights.exp().tolist())


@dataclass(frozen=True)
class Scores:
    """A metric per item: perplexity (values: each text's summed negative log-likelihood, counts: its
    tokens) or accuracy (values: 1 for a right answer, counts: 1)."""

    metric: str
    values: torch.Tensor  # [items], float64
    counts: torch.Tensor  # [items], float64

    @classmethod
    def of(cls, metric: str, values: list[float], counts: list[float]) -> Scores:
        return cls(
            metric, torch.tensor(values, dtype=torch.float64), torch.tensor(counts, dtype=torch.float64)
        )

    def value(self) -> float:
        return float(self._aggregate(self.values.sum(), self.counts.sum()))

    def _aggregate(self, values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        ratio = values / counts
        return ratio.exp() if self.metric == "perplexity" else ratio

    def gain_over(self, other: Scores) -> torch.Tensor:
        """How much better these scores are than other's: perplexity points fewer, or accuracy more."""
        return self._gain(self.value(), other.value())

    def _gain(self, mine: float | torch.Tensor, theirs: float | torch.Tensor) -> torch.Tensor:
        gain = (theirs - mine) if self.metric == "perplexity" else (mine - theirs)
        return torch.as_tensor(gain, dtype=torch.float64)

    def resampled_gain(self, other: Scores, draws: torch.Tensor) -> torch.Tensor:
        """draws [resamples, items]: how often each item is drawn in each resample."""
        mine = self._aggregate(draws @ self.values, draws @ self.counts)
        theirs = other._aggregate(draws @ other.values, draws @ other.counts)
        return self._gain(mine, theirs)


@dataclass(frozen=True)
class Gain:
    """The chosen combination's gain over the best member on the test part (positive: better), and its
    bootstrap interval."""

    estimate: float
    low: float
    high: float
    level: float
    resamples: int

    @property
    def claimed(self) -> bool:
        return self.low > 0

    @property
    def error_rate(self) -> float:
        """How often a gain is claimed where there is none: the interval's lower tail."""
        return (1 - self.level) / 2

    def record(self) -> dict[str, float | int | bool]:
        return {
            "estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level,
            "resamples": self.resamples, "claimed": self.claimed, "error_rate": self.error_rate,
        }  # fmt: skip


def bootstrap_gain(
    chosen: Scores, member: Scores, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0
) -> Gain:
    """The gain of chosen over member (scores of the same items) with a percentile bootstrap interval."""
    items = chosen.values.shape[0]
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(items, (resamples, items), generator=generator)
    draws = torch.zeros(resamples, items, dtype=torch.float64).scatter_add_(
        1, picks, torch.ones(resamples, items, dtype=torch.float64)
    )
    gains = chosen.resampled_gain(member, draws)
    tail = (1 - level) / 2
    low, high = torch.quantile(gains, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return Gain(float(chosen.gain_over(member)), low, high, level, resamples)
