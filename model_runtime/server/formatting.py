"""Pieces both endpoint formatters use: the chunk envelope and token texts for log-probabilities."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from model_runtime.server.generation import new_id, now
from model_runtime.server.protocol import Usage
from model_runtime.server.state import ServedModel


@dataclass
class Envelope:
    """The fields every chunk and body of one response repeats."""

    served: ServedModel
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
            "model": self.served.name,
            "system_fingerprint": self.served.fingerprint,
        }

    def chunk(self, choices: list[dict[str, Any]]) -> str:
        """One streamed chunk as JSON text."""
        return self._chunk_prefix + json.dumps(choices, separators=(",", ":"), ensure_ascii=False) + "}"

    def usage_chunk(self, usage: Usage) -> str:
        return self._chunk_prefix + '[],"usage":' + usage.model_dump_json() + "}"


class TokenTexts:
    """Decodes single tokens for log-probability output, each id once per response."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        text = self._cache.get(token)
        if text is None:
            text = self._cache[token] = self._tokenizer.decode([token], clean_up_tokenization_spaces=False)
        return text
