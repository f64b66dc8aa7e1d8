"""Token ids to text, one token at a time, with stop sequences that never leak into a stream.

Decoding a single token on its own is wrong for many tokenizers (a multi-byte character split over two
tokens, SentencePiece's leading spaces), so each step decodes a short window that ends at the new token
and keeps only the text it adds, waiting while the window ends in an incomplete character. Text that
could still turn out to be the start of a stop sequence is held back until it cannot.

Stop sequences are matched with an Aho-Corasick automaton over all of them at once, fed only the
characters each token adds: its state is the longest tail of the text that begins some stop sequence
(exactly what must be held back), so a token costs a few steps per new character, however long the
stop sequences are and however much text came before.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from functools import lru_cache
from typing import cast

from transformers import PreTrainedTokenizerBase

_INCOMPLETE = "\ufffd"
_CONTEXT_TOKENS = 6  # earlier tokens decoded with the new one, enough to settle spacing and merges


class StopAutomaton:
    """Aho-Corasick over a set of stop sequences. State 0 is the empty text; state s stands for one
    prefix of some stop sequence, `depth[s]` characters long."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._goto: list[dict[str, int]] = [{}]
        self.depth = [0]
        # Length of the longest stop sequence that ends the text in this state (0: none does).
        self.complete = [0]
        for stop in stops:
            state = 0
            for char in stop:
                following = self._goto[state].get(char)
                if following is None:
                    following = len(self._goto)
                    self._goto[state][char] = following
                    self._goto.append({})
                    self.depth.append(self.depth[state] + 1)
                    self.complete.append(0)
                state = following
            self.complete[state] = len(stop)
        # Failure links, breadth first: the longest proper suffix of a state that is also a state.
        self._fail = [0] * len(self._goto)
        queue = deque(self._goto[0].values())
        while queue:
            state = queue.popleft()
            for char, following in self._goto[state].items():
                queue.append(following)
                fallback = self._fail[state]
                while fallback and char not in self._goto[fallback]:
                    fallback = self._fail[fallback]
                self._fail[following] = self._goto[fallback].get(char, 0)
                self.complete[following] = self.complete[following] or self.complete[self._fail[following]]

    def advance(self, state: int, char: str) -> int:
        # Amortised O(1): every failure step gives back depth that an earlier character added.
        while state and char not in self._goto[state]:
            state = self._fail[state]
        return self._goto[state].get(char, 0)


@lru_cache(maxsize=16)
def stop_automaton(stops: tuple[str, ...]) -> StopAutomaton:
    """Shared by the n choices of a request, and by requests that repeat the same stop list."""
    return StopAutomaton(stops)


class IncrementalText:
    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, prompt_ids: Sequence[int], stop: Sequence[str] = ()
    ) -> None:
        self._tokenizer = tokenizer
        self._ids = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        stops = tuple(s for s in stop if s)
        self._stops = stop_automaton(stops) if stops else None
        self._state = 0  # the automaton's state after all text decoded so far
        self._held = ""  # decoded, not released: the tail that may still begin a stop sequence
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        text = self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return cast(str, text)  # one sequence of ids decodes to one string

    def add(self, token: int) -> str:
        """Feed one generated token; return the text that may now be released (possibly empty)."""
        if self.stopped:
            return ""
        self._ids.append(token)
        before = self._decode(self._ids[self._prefix_offset : self._read_offset])
        after = self._decode(self._ids[self._prefix_offset :])
        if len(after) <= len(before) or after.endswith(_INCOMPLETE):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        # Keep the window short: only the tail matters for the next token's spacing.
        if self._prefix_offset > _CONTEXT_TOKENS:
            drop = self._prefix_offset - _CONTEXT_TOKENS
            del self._ids[:drop]
            self._prefix_offset -= drop
            self._read_offset -= drop
        return self._release(after[len(before) :])

    def flush(self) -> str:
        """At the end of generation: release whatever was held back (no stop sequence can complete now)."""
        if self.stopped:
            return ""
        tail = self._decode(self._ids[self._prefix_offset :])
        pending = self._decode(self._ids[self._prefix_offset : self._read_offset])
        released = self._held + tail[len(pending) :].rstrip(_INCOMPLETE)
        self._held = ""
        self._prefix_offset = self._read_offset = len(self._ids)
        return released

    def _release(self, new: str) -> str:
        stops = self._stops
        if stops is None:
            return new
        text = self._held + new
        state, cut = self._state, len(text)
        for offset, char in enumerate(new, start=len(self._held) + 1):
            state = stops.advance(state, char)
            if stops.complete[state]:
                # A later character may still end a stop sequence that began earlier: keep the earliest.
                cut = min(cut, offset - stops.complete[state])
        if cut < len(text):
            self.stopped, self._held = True, ""
            return text[:cut]
        self._state = state
        keep = stops.depth[state]
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep]
