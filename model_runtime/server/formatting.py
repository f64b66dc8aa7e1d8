"""How an endpoint writes choices (the Formatter protocol, and the choices it is given), and the pieces
both endpoint formatters use: the chunk envelope and token texts for log-probabilities."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

from transformers import PreTrainedTokenizerBase

from model_runtime.scheduler.events import Event, TokenLogprobs
from model_runtime.server.protocol import Usage


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


FinishReason = Literal["stop", "length"]
_CLIENT_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length"}


def client_finish_reason(reason: str | None) -> FinishReason | None:
    """The finish reason a client is told: "cancelled" never reaches one that is still listening."""
    return _CLIENT_REASONS.get(reason) if reason else None


@dataclass
class ChoiceResult:
    index: int
    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[TokenLogprobs] = field(default_factory=list)


def accumulate(results: dict[int, ChoiceResult], event: Event) -> None:
    result = results.setdefault(event.index, ChoiceResult(event.index))
    result.text += event.text
    result.tokens = event.tokens
    result.finish_reason = event.finish_reason or result.finish_reason
    result.logprobs.extend(event.logprobs)


@dataclass
class Envelope:
    """The fields every chunk and body of one response repeats."""

    model: str  # the served name
    fingerprint: str
    object_name: str  # of a streamed chunk
    prefix: str
    id: str = ""
    created: int = field(default_factory=now)

    def __post_init__(self) -> None:
        self.id = new_id(self.prefix)
        # Every streamed chunk starts the same way: serialise that once, not once per token.
        head = json.dumps(
            {"object": self.object_name, **self.head()}, separators=(",", ":"), ensure_ascii=False
        )
        self._chunk_prefix = head[:-1] + ',"choices":'

    def head(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
        }

    def chunk(self, choices: list[dict[str, Any]]) -> str:
        """One streamed chunk as JSON text."""
        return self._chunk_prefix + json.dumps(choices, separators=(",", ":"), ensure_ascii=False) + "}"

    def usage_chunk(self, usage: Usage) -> str:
        return self._chunk_prefix + '[],"usage":' + usage.model_dump_json() + "}"


class Formatter(Protocol):
    """How one endpoint writes choices: streamed chunks and the final body, in its envelope."""

    envelope: Envelope

    def chunks(self, event: Event, first: bool) -> list[str]: ...
    def body(self, choices: list[ChoiceResult], usage: Usage) -> Any: ...


class TokenTexts:
    """Decodes single tokens for log-probability output, each id once per response."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        text = self._cache.get(token)
        if text is None:
            decoded = self._tokenizer.decode([token], clean_up_tokenization_spaces=False)
            text = self._cache[token] = cast(str, decoded)  # one sequence of ids decodes to one string
        return text
