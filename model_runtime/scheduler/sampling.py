"""Choosing the next token from logits: the one place in the runtime that samples.

Works on a whole batch at once. Every sequence has its own random generator, seeded from the request's
`seed` when given, so a seeded request draws the same numbers whatever else shares its batch. A
sequence's logit bias is turned into tensors once, when it is submitted, and added in one operation a
step, so its cost per token does not grow with the number of entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model_runtime.scheduler.events import TokenLogprobs
from model_runtime.scheduler.params import SamplingParams


@dataclass
class SampleRow:
    """What the sampler needs of one sequence for one step."""

    params: SamplingParams
    generator: torch.Generator | None
    suppress_eos: bool
    bias: LogitBias | None  # make_bias(params.logit_bias), kept by the sequence
    output: Sequence[int] = ()  # tokens generated so far; read only when penalties are set


@dataclass(frozen=True)
class LogitBias:
    """A sequence's logit_bias as a sparse row: token ids and what to add to their logits."""

    ids: torch.Tensor  # int64 [entries]
    values: torch.Tensor  # float32 [entries]


def make_generator(seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def make_bias(logit_bias: Sequence[tuple[int, float]]) -> LogitBias | None:
    """Built once per sequence, so that a step adds it without looking at the entries again."""
    if not logit_bias:
        return None
    ids, values = zip(*logit_bias, strict=True)
    return LogitBias(torch.tensor(ids, dtype=torch.int64), torch.tensor(values, dtype=torch.float32))


def _uniform(rows: Sequence[SampleRow]) -> torch.Tensor:
    # One draw per row from the row's own generator (seeded) or the global one.
    return torch.cat([torch.rand(1, generator=row.generator) for row in rows])


def sample(
    logits: torch.Tensor, rows: Sequence[SampleRow], eos_ids: Sequence[int]
) -> tuple[list[int], list[TokenLogprobs | None]]:
    """logits: float32 [batch, vocab] on any device. Returns the chosen tokens (and log-probabilities for
    rows that asked for them)."""
    logits = logits.to("cpu", torch.float32)
    suppress = [i for i, row in enumerate(rows) if row.suppress_eos]
    adjusted = [i for i, row in enumerate(rows) if row.output or row.bias is not None]
    if (suppress and eos_ids) or adjusted:
        logits = logits.clone()
    if suppress and eos_ids:
        logits[torch.tensor(suppress).unsqueeze(1), torch.tensor(list(eos_ids)).unsqueeze(0)] = -float("inf")
    for i in adjusted:
        _adjust(logits[i], rows[i])
    chosen = logits.argmax(dim=-1)
    sampled = [i for i, row in enumerate(rows) if not row.params.greedy]
    if sampled:
        index = torch.tensor(sampled)
        subset = [rows[i] for i in sampled]
        temperature = torch.tensor([r.params.temperature for r in subset]).unsqueeze(1)
        probs = torch.softmax(logits.index_select(0, index) / temperature, dim=-1)
        top_p = torch.tensor([r.params.top_p for r in subset])
        if bool((top_p < 1.0).any()):
            probs = _nucleus(probs, top_p)
        cumulative = probs.cumsum(dim=-1)
        threshold = _uniform(subset) * cumulative[:, -1]
        picks = torch.searchsorted(cumulative, threshold.unsqueeze(1)).squeeze(1)
        chosen[index] = picks.clamp(max=logits.shape[1] - 1)
    tokens = chosen.tolist()
    return tokens, _logprobs(logits, rows, tokens)


def _adjust(row_logits: torch.Tensor, row: SampleRow) -> None:
    """OpenAI's penalties (subtract per occurrence and once for presence) and logit bias, in place."""
    params = row.params
    if row.output and params.penalizes:
        counts = torch.bincount(torch.tensor(row.output), minlength=row_logits.shape[0])[
            : row_logits.shape[0]
        ]
        row_logits -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0)
    if row.bias is not None:
        row_logits.index_add_(0, row.bias.ids, row.bias.values)


def _nucleus(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches top_p (at least one token)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    outside = mass_before >= top_p.unsqueeze(1)
    outside[:, 0] = False  # the most likely token always stays, even at top_p=0
    sorted_probs[outside] = 0.0
    return torch.zeros_like(probs).scatter_(1, order, sorted_probs)


def _logprobs(
    logits: torch.Tensor, rows: Sequence[SampleRow], tokens: list[int]
) -> list[TokenLogprobs | None]:
    wanted = [i for i, row in enumerate(rows) if row.params.logprobs is not None]
    result: list[TokenLogprobs | None] = [None] * len(rows)
    if not wanted:
        return result
    logp = torch.log_softmax(logits.index_select(0, torch.tensor(wanted)), dim=-1)
    for k, i in enumerate(wanted):
        count = rows[i].params.logprobs or 0
        top: tuple[tuple[int, float], ...] = ()
        if count:
            values, ids = logp[k].topk(count)
            top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
        result[i] = TokenLogprobs(tokens[i], float(logp[k, tokens[i]]), top)
    return result
