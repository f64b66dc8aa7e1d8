"""What a conversion must show before its result is kept: how far its logits are from the source's on
a fixed sample, how often the two agree on the most likely next token, the perplexity of each on
held-out text, and the size and latency of each. Measured through the engines that serve them (the
same KV cache and attention code paths), teacher-forced on the sample."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from model_runtime.config import ModelSettings
from model_runtime.engine.agreement import (
    SAMPLE_TEXTS,
    SAMPLE_TOKENS,
    logit_agreement,
    perplexity,
    sample_sequences,
    step_latency_ms,
    teacher_forced,
)
from model_runtime.engine.factory import load_engine


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
        **logit_agreement(source_logits, target_logits),
        perplexity=round(perplexity(target_logits, sequences), 4),
        source_perplexity=round(perplexity(source_logits, sequences), 4),
        size_bytes=folder_size(Path(target.path)),
        source_size_bytes=folder_size(Path(source.path)),
        latency_ms=round(target_latency, 3),
        source_latency_ms=round(source_latency, 3),
        sample=f"{len(sequences)} held-out texts x {SAMPLE_TOKENS} tokens, teacher-forced",
    )
