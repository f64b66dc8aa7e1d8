"""How closely one engine follows another on a fixed sample, teacher-forced one token a step as in
serving: the measure behind every precision or format change (`convert`'s checks, and `dtype: auto`'s
bfloat16 on CPUs that compute it natively)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence

import torch

from model_runtime.engine.base import Engine

SAMPLE_TOKENS = 48
SAMPLE_TEXTS = 8
# The top-1 agreement a changed model must keep with its source unless the operator says otherwise.
MIN_AGREEMENT = 0.9


def sample_sequences(engine: Engine, texts: Sequence[str]) -> list[list[int]]:
    """The first SAMPLE_TEXTS texts long enough, cut to SAMPLE_TOKENS tokens each."""
    sequences = []
    for text in texts:
        ids = engine.tokenizer(text)["input_ids"]
        if len(ids) >= SAMPLE_TOKENS:
            sequences.append(ids[:SAMPLE_TOKENS])
        if len(sequences) == SAMPLE_TEXTS:
            break
    if not sequences:
        raise ValueError(f"no evaluation text of {SAMPLE_TOKENS} tokens or more")
    return sequences


def teacher_forced(engine: Engine, sequences: list[list[int]]) -> torch.Tensor:
    """Logits [sequences, positions - 1, vocab]: the prediction after each prefix of each sequence,
    fed one token per step as in serving."""
    ids = list(range(len(sequences)))
    steps = [engine.step([], [], ids, [[s[0]] for s in sequences])]
    for position in range(1, len(sequences[0]) - 1):
        steps.append(engine.step(ids, [s[position] for s in sequences], [], []))
    engine.reset()
    return torch.stack(steps, dim=1)


def perplexity(logits: torch.Tensor, sequences: list[list[int]]) -> float:
    targets = torch.tensor([s[1:] for s in sequences])
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return math.exp(nll.item())


def step_latency_ms(engine: Engine, steps: int = 16) -> float:
    engine.step([], [], [0], [[1] * 16])
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        engine.step([0], [2], [], [])
        times.append(time.perf_counter() - started)
    engine.reset()
    return statistics.median(times) * 1e3


def logit_agreement(source: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """The largest logit difference, and how often the two agree on the most likely next token."""
    return {
        "max_abs_logit_diff": round((target - source).abs().max().item(), 6),
        "top1_agreement": round((target.argmax(-1) == source.argmax(-1)).float().mean().item(), 4),
    }
