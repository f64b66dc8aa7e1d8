"""Ensemble members for tests: three small Llamas trained briefly on bootstrap samples of the demo
corpus, sharing one tokenizer (about 30 s on 2 cores, cached under .cache/ and rebuilt when the recipe
or the code that trains them changes), and helpers that combine them by hand, as the tests' reference."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from harness.cache import CACHE, one_builder

MEMBERS = Path(os.environ.get("MODEL_RUNTIME_ENSEMBLE_MEMBERS", CACHE / "ensemble-members"))
COUNT = 3
STEPS = 80  # 80 x 8 windows: enough to write corpus words; the tests check mechanics, the bench quality


@functools.cache  # checked once per test session, whichever module asks first
def ensure_ensemble_members() -> Path:
    """The cached members folder: member-0..2, the shared tokenizer, ensemble.json (their average)."""
    with one_builder("ensemble-members"):
        subprocess.run(
            [sys.executable, "-m", "model_runtime", "demo-model", str(MEMBERS), "--members", str(COUNT),
             "--method", "bagging", "--steps", str(STEPS), "--if-missing"],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return MEMBERS


def single_threaded() -> Iterator[None]:
    """For a module-scoped fixture: the tests' forward passes of these tiny models on one torch thread,
    which is faster than two for them (see engine/threads.py) and far faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def member_folders(members: Path) -> list[Path]:
    return [members / f"member-{i}" for i in range(COUNT)]


def load_models(folders: Sequence[Path]) -> list[PreTrainedModel]:
    return [AutoModelForCausalLM.from_pretrained(f).eval() for f in folders]


@torch.inference_mode()
def member_logprobs(models: Sequence[PreTrainedModel], ids: Sequence[int]) -> list[torch.Tensor]:
    """Each model's next-token log-probabilities after ids, by a plain full forward pass."""
    return [
        torch.log_softmax(m(input_ids=torch.tensor([list(ids)])).logits[0, -1].float(), -1) for m in models
    ]


def mixture(logprobs: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """log(sum_m w_m p_m) / sum w, written out: the reference for the engine's LinearPool."""
    total = sum(weights)
    probs = sum(w / total * lp.exp() for w, lp in zip(weights, logprobs, strict=True))
    return torch.log(probs)
