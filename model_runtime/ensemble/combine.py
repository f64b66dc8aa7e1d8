"""Combining members' next-token distributions into one: the same code serves requests (EnsembleEngine)
and measures candidates (evaluate.py), so what is evaluated is what is served.

Every combiner takes each member's log-probabilities [n, vocab] and returns the ensemble's
log-probabilities [n, vocab], which the scheduler samples from as it would from a model's logits.

- LinearPool: log of the weighted mean of probabilities (a mixture; never worse than its worst member,
  and in log-loss never worse than the weighted mean of the members' log-losses).
- LogLinearPool: the weighted mean of log-probabilities, renormalised (a product of experts: sharper,
  tokens must please every member).
- GatedPool: a mixture whose weights a small linear layer (the stacker) chooses per token from how sure
  each member is (its highest log-probability and its entropy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file, save_file

from model_runtime.engine.base import ModelLoadError
from model_runtime.ensemble.spec import EnsembleSpec

FEATURES = ("max_logprob", "entropy")


class Combiner(Protocol):
    def __call__(self, logprobs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Members' log-probabilities, each [n, vocab] -> the ensemble's [n, vocab]."""
        ...


def aligned_logprobs(logits: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Members' logits -> log-probabilities over their common vocabulary (members may pad theirs
    differently; ids past the shared tokenizer are never text)."""
    width = min(t.shape[-1] for t in logits)
    return [torch.log_softmax(t[..., :width].float(), dim=-1) for t in logits]


def _log_weights(weights: Sequence[float]) -> torch.Tensor:
    total = sum(weights)
    return torch.tensor([math.log(w / total) if w > 0 else -math.inf for w in weights])


class LinearPool:
    def __init__(self, weights: Sequence[float]) -> None:
        self.log_weights = _log_weights(weights)

    def __call__(self, logprobs: Sequence[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(list(logprobs), dim=1)  # [n, members, vocab]
        return torch.logsumexp(stacked + self.log_weights.view(1, -1, 1), dim=1)


class LogLinearPool:
    def __init__(self, weights: Sequence[float]) -> None:
        total = sum(weights)
        self.weights = torch.tensor([w / total for w in weights])

    def __call__(self, logprobs: Sequence[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(list(logprobs), dim=1)
        # A zero weight must drop the member, even where its log-probability is -inf.
        mixed = (stacked.nan_to_num(neginf=-1e30) * self.weights.view(1, -1, 1)).sum(dim=1)
        return torch.log_softmax(mixed, dim=-1)


def member_features(logprobs: torch.Tensor) -> torch.Tensor:
    """[n, vocab] log-probabilities -> [n, len(FEATURES)]: how sure the member is at each position."""
    entropy = torch.special.entr(logprobs.exp()).sum(dim=-1)
    return torch.stack([logprobs.max(dim=-1).values, entropy], dim=-1)


@dataclass
class Stacker:
    """Per-token mixture weights: softmax(weight @ standardised features + bias), features being every
    member's FEATURES side by side. Trained by stacking.fit_gate; weight = 0 is a fixed mixture."""

    weight: torch.Tensor  # [members, members * features]
    bias: torch.Tensor  # [members]
    mean: torch.Tensor  # [members * features], of the training features
    scale: torch.Tensor  # [members * features]

    @property
    def members(self) -> int:
        return self.bias.shape[0]

    def log_weights(self, features: torch.Tensor) -> torch.Tensor:
        """features [n, members, len(FEATURES)] -> log mixture weights [n, members]."""
        flat = (features.reshape(features.shape[0], -1) - self.mean) / self.scale
        return torch.log_softmax(flat @ self.weight.T + self.bias, dim=-1)

    def save(self, path: Path) -> None:
        tensors = {"weight": self.weight, "bias": self.bias, "mean": self.mean, "scale": self.scale}
        save_file(
            {k: v.float().contiguous() for k, v in tensors.items()},
            path,
            metadata={"features": ",".join(FEATURES)},
        )

    @classmethod
    def load(cls, path: Path, members: int) -> Stacker:
        try:
            tensors = load_file(path)
            stacker = cls(tensors["weight"], tensors["bias"], tensors["mean"], tensors["scale"])
        except (OSError, KeyError, ValueError) as exc:
            raise ModelLoadError(f"{path}: not a stacker ({exc})") from exc
        width = members * len(FEATURES)
        if stacker.weight.shape != (members, width) or stacker.mean.shape != (width,):
            raise ModelLoadError(
                f"{path}: a stacker for {stacker.members} members and {stacker.weight.shape[1]} features; "
                f"this ensemble has {members} members and {width} features"
            )
        return stacker


class GatedPool:
    def __init__(self, stacker: Stacker) -> None:
        self.stacker = stacker

    def __call__(self, logprobs: Sequence[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(list(logprobs), dim=1)
        features = torch.stack([member_features(lp) for lp in logprobs], dim=1)
        log_weights = self.stacker.log_weights(features)
        return torch.logsumexp(stacked + log_weights.unsqueeze(-1), dim=1)


def combiner_for(spec: EnsembleSpec, folder: Path) -> Combiner:
    """The spec's combination of distributions. A vote ensemble answers by vote, per member; a sequence
    that reaches it unrouted (the engine's own warm-up) gets the members' plain average."""
    if spec.method == "stack":
        assert spec.stacker is not None  # the spec's validator guarantees it
        return GatedPool(Stacker.load(folder / spec.stacker, len(spec.members)))
    if spec.method == "vote":
        return LinearPool([1.0] * len(spec.members))
    if spec.combine == "logprobs":
        return LogLinearPool(spec.weights)
    return LinearPool(spec.weights)
