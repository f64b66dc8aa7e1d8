"""Token ids to text, one token at a time, with stop sequences that never leak into a stream.

Decoding a single token on its own is wrong for many tokenizers (a multi-byte character split over two
tokens, SentencePiece's leading spaces), so each step decodes a short window that ends at the new token
and keeps only the text it adds, waiting while the window ends in an incomplete character. Text that
could still turn out to be the start of a stop sequence is held back until it cannot.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

_INCOMPLETE = "\ufffd"
_CONTEXT_TOKENS = 6  # earlier tokens decoded with the new one, enough to settle spacing and merges


class IncrementalText:
    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, prompt_ids: Sequence[int], stop: Sequence[str] = ()
    ) -> None:
        self._tokenizer = tokenizer
        self._ids = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._stop = tuple(s for s in stop if s)
        self.text = ""  # all text decoded so far (cut at a stop sequence once one is found)
        self.emitted = 0  # characters of self.text already released to the client
        self.stopped = False

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token: int) -> str:
        """Feed one generated token; return the text that may now be released (possibly empty)."""
        if self.stopped:
            return ""
        self._ids.append(token)
        before = self._decode(self._ids[self._prefix_offset : self._read_offset])
        after = self._decode(self._ids[self._prefix_offset :])
        if len(after) > len(before) and not after.endswith(_INCOMPLETE):
            self.text += after[len(before) :]
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            # Keep the window short: only the tail matters for the next token's spacing.
            if self._prefix_offset > _CONTEXT_TOKENS:
                drop = self._prefix_offset - _CONTEXT_TOKENS
                del self._ids[:drop]
                self._prefix_offset -= drop
                self._read_offset -= drop
        return self._release()

    def flush(self) -> str:
        """At the end of generation: release whatever was held back (no stop sequence can complete now)."""
        if not self.stopped:
            tail = self._decode(self._ids[self._prefix_offset :])
            pending = self._decode(self._ids[self._prefix_offset : self._read_offset])
            if len(tail) > len(pending):
                self.text += tail[len(pending) :].rstrip(_INCOMPLETE)
        released = self.text[self.emitted :]
        self.emitted = len(self.text)
        return released

    def _release(self) -> str:
        if self._stop:
            search_from = max(0, self.emitted - max(len(s) for s in self._stop))
            hits = [i for s in self._stop if (i := self.text.find(s, search_from)) >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True
                return self.flush()
        limit = len(self.text) - self._held_back()
        released = self.text[self.emitted : limit] if limit > self.emitted else ""
        self.emitted = max(self.emitted, limit)
        return released

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of some stop sequence."""
        longest = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
