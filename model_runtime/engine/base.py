"""The engine contract: what the scheduler may ask of any engine (torch, ONNX, a plugin's).

An engine keeps a running batch of sequences and their attention state. It never samples: it returns
next-token logits and the scheduler chooses the token, so sampling stays in one place and an engine of
several models can combine their distributions before anything is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from model_runtime.errors import OperatorError

if TYPE_CHECKING:  # the HTTP process reads EngineInfo without importing torch
    import torch
    from transformers import PreTrainedTokenizerBase


class ModelLoadError(OperatorError, ValueError):
    """A model folder that cannot be served; the message names the file or setting at fault."""


@dataclass(frozen=True)
class EngineInfo:
    """What the server needs to know about an engine, read once at load."""

    max_context: int
    eos_token_ids: frozenset[int]
    device: str
    dtype: str
    parameters: int
    load_seconds: float


@runtime_checkable
class Engine(Protocol):
    """A batch of live sequences, each named by an integer id the scheduler chooses."""

    info: EngineInfo
    tokenizer: PreTrainedTokenizerBase

    def step(
        self,
        decode_ids: Sequence[int],
        decode_tokens: Sequence[int],
        new_ids: Sequence[int],
        new_prompts: Sequence[Sequence[int]],
    ) -> torch.Tensor:
        """One pass over the batch: feed one token to every live sequence (decode_ids must be all of
        them, or none) and add the sequences new_ids with their prompts. Returns float32 logits
        [len(decode_ids) + len(new_ids), vocab] for each one's next token: decode_ids in the order given,
        then new_ids."""
        ...

    def release(self, seq_ids: Sequence[int]) -> None:
        """Forget sequences (finished or cancelled); unknown ids are ignored."""
        ...

    def reset(self) -> None:
        """Forget every sequence; used after an engine error."""
        ...

    def close(self) -> None:
        """Free the model's memory; the engine is unusable afterwards."""
        ...


@runtime_checkable
class RoutableEngine(Engine, Protocol):
    """An engine made of parts (an ensemble of models, say) that can run a sequence on one part alone:
    a sequence whose SamplingParams.route is set is routed before it joins."""

    def route(self, seq_id: int, part: int) -> None:
        """Before seq_id joins: it runs on that part alone, and its rows are that part's logits."""
        ...
