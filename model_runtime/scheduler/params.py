"""What a request asks of generation, per choice (torch-free: built in the HTTP process)."""

from __future__ import annotations

from dataclasses import dataclass

# Below this, logits divided by the temperature overflow float32 (and the distribution is one-hot for
# any practical purpose), so such a choice is decoded greedily instead of sampling from NaNs.
MIN_SAMPLING_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; 0: the chosen token's; k: also the k most likely
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    route: int | None = None  # the part of a RoutableEngine that runs this sequence alone; None: all

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_SAMPLING_TEMPERATURE

    @property
    def penalizes(self) -> bool:
        """Whether the tokens generated so far change the logits (so the scheduler keeps them)."""
        return bool(self.presence_penalty or self.frequency_penalty)
