"""What a conversion must show before its result is kept: how far its logits are from the source's on
a fixed sample, how often the two agree on the most likely next token, the perplexity of each on
held-out text, and the size and latency of each. Measured through the engines that serve them (the
same KV cache and attention code paths), teacher-forced on the sample."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from model_runtime.config import ModelSettings
from model_runtime.engine.base import Engine
from model_runtime.engine.factory import load_engine

SAMPLE_TOKENS = 48
SAMPLE_TEXTS = 8


@dataclass(frozen=True)
class Checks:
    max_abs_logit_diff: float
    top1_agreement: float
    perplexity: float
    source_perplexity: float
    size_bytes: int
    source_size_bytes: int
    latency_ms: float  # one decode step at batch 1
    source_latency_ms: float
    sample: str

    def as_dict(self) -> dict:
        return asdict(self)


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


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


def measure(source: ModelSettings, target: ModelSettings, texts: Sequence[str]) -> Checks:
    source_engine = load_engine(source, max_batch=SAMPLE_TEXTS)
    sequences = sample_sequences(source_engine, texts)
    source_logits = teacher_forced(source_engine, sequences)
    source_latency = step_latency_ms(source_engine)
    source_engine.close()
    target_engine = load_engine(target, max_batch=SAMPLE_TEXTS)
    target_logits = teacher_forced(target_engine, sequences)
    target_latency = step_latency_ms(target_engine)
    target_engine.close()
    return Checks(
        max_abs_logit_diff=round((target_logits - source_logits).abs().max().item(), 6),
        top1_agreement=round((target_logits.argmax(-1) == source_logits.argmax(-1)).float().mean().item(), 4),
        perplexity=round(perplexity(target_logits, sequences), 4),
        source_perplexity=round(perplexity(source_logits, sequences), 4),
        size_bytes=folder_size(Path(target.path)),
        source_size_bytes=folder_size(Path(source.path)),
        latency_ms=round(target_latency, 3),
        source_latency_ms=round(source_latency, 3),
        sample=f"{len(sequences)} held-out texts x {SAMPLE_TOKENS} tokens, teacher-forced",
    )
