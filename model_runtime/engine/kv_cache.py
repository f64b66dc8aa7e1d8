"""The key/value cache and attention for continuous batching over a standard Hugging Face decoder.

Every live sequence's tokens end at the same column of one preallocated buffer per layer ("right
aligned"), so a decode step writes one column for the whole batch and attention reads a view: no
per-step concatenation, as Hugging Face's DynamicCache does. A finished sequence's row is filled by
moving the last row into it, so live rows stay contiguous. When the window reaches the buffer's right
edge it is moved back to column 0 (or the buffer grows), once per many steps.

One forward pass (a "step") carries, packed into a single row of tokens, one new token for every live
sequence and the whole prompt of every sequence that joins. The model's weights are read once for
both, which on a memory-bound CPU or GPU is what a step costs: a request that joins does not cost the
others an extra pass. Attention is ours (registered with transformers' AttentionInterface): decode
tokens attend to their own row of the cache; a new prompt attends to itself, causally. A prompt longer
than the prefill budget goes alone, in chunks, each attending to the chunks before it.

The model meets this object twice per layer: `update(key, value, layer_idx)` stores the pass's keys and
values, and `attend(...)` (through the registered attention function) computes attention for the pass.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION_NAME = "model_runtime_aligned"
_active: contextvars.ContextVar[AlignedKVCache | None] = contextvars.ContextVar(
    "aligned_kv_cache", default=None
)
# Passed as the attention mask during an engine pass: a 4D tensor makes transformers skip building a
# mask of its own (our attention needs none from it).
NO_MASK = torch.ones(1, 1, 1, 1, dtype=torch.bool)


@dataclass
class _Pass:
    """The layout of one forward pass's tokens: decode tokens of rows [0, decode) first, then the
    prompts of the joining rows, packed; or one chunk of one long prompt."""

    decode: int  # live rows fed one token each
    prompt_lengths: list[int]  # tokens of each joining prompt in this pass
    row_index: torch.Tensor  # [tokens] where each token's key and value are stored
    column_index: torch.Tensor
    read: slice  # cache columns the decode tokens attend to
    prompt_mask: torch.Tensor | None  # [1, 1, q, k] for the prompt tokens
    chunk_keys: tuple[int, slice] | None = None  # chunk mode: (row, columns) the chunk attends to


class AlignedKVCache:
    def __init__(
        self,
        max_rows: int,
        max_columns: int,
        device: torch.device,
        dtype: torch.dtype,
        initial_rows: int = 4,
        initial_columns: int = 128,
    ) -> None:
        self.max_rows = max_rows
        self.max_columns = max_columns
        self.device = device
        self.dtype = dtype
        self.rows = 0  # live rows are [0, rows)
        self.start = 0  # first column any live row uses
        self.end = 0  # one past the last written column; every live row ends here
        # Start small and grow by doubling: a large batch or a long context costs memory only when used.
        self._cap_rows = min(initial_rows, max_rows)
        self._cap_cols = min(initial_columns, max_columns + 1)
        self._keys: list[torch.Tensor | None] = []
        self._values: list[torch.Tensor | None] = []
        self.valid = torch.zeros(self._cap_rows, self._cap_cols, dtype=torch.bool, device=device)
        self.lengths = torch.zeros(self._cap_rows, dtype=torch.long, device=device)
        self._pass: _Pass | None = None
        self._joining: list[int] = []  # prompt lengths of rows placed but not yet committed

    # --- what the model calls -------------------------------------------------------------------------
    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *args: object,
        **kwargs: object,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the pass's keys and values ([1, kv_heads, tokens, dim]) where its plan says."""
        plan = self._pass
        assert plan is not None, "a step must be planned before the forward pass"
        while len(self._keys) <= layer_idx:
            self._keys.append(None)
            self._values.append(None)
        keys, values = self._keys[layer_idx], self._values[layer_idx]
        if keys is None or values is None:
            keys = self._allocate(key_states)
            values = self._allocate(value_states)
            self._keys[layer_idx], self._values[layer_idx] = keys, values
        keys[plan.row_index, :, plan.column_index] = key_states[0].transpose(0, 1)
        values[plan.row_index, :, plan.column_index] = value_states[0].transpose(0, 1)
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.end - self.start

    def attend(
        self,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        scaling: float | None,
    ) -> torch.Tensor:
        """query [1, heads, tokens, dim] -> output [1, tokens, heads, dim] (what transformers expects)."""
        plan = self._pass
        assert plan is not None
        keys, values = self._keys[layer_idx], self._values[layer_idx]
        assert keys is not None  # update() stored this layer's first
        assert values is not None
        heads, dim = query.shape[1], query.shape[3]
        kv_heads = key.shape[1]
        group = heads // kv_heads
        outputs = []
        if plan.decode:
            n = plan.decode
            # One query per row: fold the query heads that share a key head into the query length
            # (no copy of the keys for grouped-query attention).
            q = query[0, :, :n].transpose(0, 1).reshape(n, kv_heads, group, dim)
            k = keys[:n, :, plan.read]
            v = values[:n, :, plan.read]
            mask = self.valid[:n, plan.read][:, None, None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling)
            outputs.append(out.reshape(n, heads, dim))
        if plan.prompt_mask is not None:
            q = query[:, :, plan.decode :]
            if plan.chunk_keys is not None:
                row, columns = plan.chunk_keys
                k = keys[row : row + 1, :, columns]
                v = values[row : row + 1, :, columns]
            else:
                k, v = key[:, :, plan.decode :], value[:, :, plan.decode :]
            if group > 1:
                k = k.repeat_interleave(group, dim=1)
                v = v.repeat_interleave(group, dim=1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=plan.prompt_mask, scale=scaling)
            outputs.append(out[0].transpose(0, 1))
        return torch.cat(outputs).unsqueeze(0) if len(outputs) > 1 else outputs[0].unsqueeze(0)

    # --- what the engine calls ------------------------------------------------------------------------
    def plan_step(self, decode: int, prompt_lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Plan a pass feeding one token to each of the `decode` live rows (0 or all of them) and adding
        one row per prompt. Returns (position_ids [1, tokens], the index of each row's last token)."""
        assert decode in (0, self.rows), "a decode step feeds every live row"
        joining = list(prompt_lengths)
        if decode and self.end >= self._cap_cols:
            self._make_room_right()
        new_end = self.end + (1 if decode else 0)
        if joining:
            self._ensure_rows(self.rows + len(joining))
            if self.rows == 0:
                self.start = self.end = new_end = 0
            widest = max(joining)
            if new_end < widest:
                # The new rows need `widest` columns left of the shared end: move the live window right.
                shift = widest - new_end
                self._ensure_cols(self.end + shift + 1)
                self._relocate(self.start + shift)
                new_end += shift
        dev = self.device
        rows_index, cols_index, positions, last = [], [], [], []
        if decode:
            live = torch.arange(decode, device=dev)
            self.valid[:decode, self.end] = True
            rows_index.append(live)
            cols_index.append(torch.full((decode,), self.end, device=dev))
            positions.append(self.lengths[:decode].clone())
            last.append(live)
        if joining:
            lengths = torch.tensor(joining, dtype=torch.long, device=dev)
            segment = torch.repeat_interleave(torch.arange(len(joining), device=dev), lengths)
            ends = lengths.cumsum(0)
            offsets = torch.arange(int(ends[-1]), device=dev) - (ends - lengths)[segment]
            first = self.rows
            self.valid[first : first + len(joining)] = False
            for i, length in enumerate(joining):
                self.valid[first + i, new_end - length : new_end] = True
            self.lengths[first : first + len(joining)] = lengths
            rows_index.append(first + segment)
            cols_index.append(new_end - lengths[segment] + offsets)
            positions.append(offsets)
            last.append(decode + ends - 1)
            same = segment.unsqueeze(0) == segment.unsqueeze(1)
            prompt_mask = (same & (offsets.unsqueeze(0) <= offsets.unsqueeze(1)))[None, None]
        else:
            prompt_mask = None
        self._pass = _Pass(
            decode=decode,
            prompt_lengths=joining,
            row_index=torch.cat(rows_index),
            column_index=torch.cat(cols_index),
            read=slice(self.start, self.end + 1),
            prompt_mask=prompt_mask,
        )
        self._joining = joining
        return torch.cat(positions).unsqueeze(0), torch.cat(last)

    def plan_chunk(self, length: int, start: int, count: int) -> torch.Tensor:
        """Plan tokens [start, start+count) of one long prompt (no decode in the pass; the row joins
        with its last chunk's commit). Returns position_ids [1, count]."""
        if start == 0:
            self._ensure_rows(self.rows + 1)
            if self.rows == 0:
                self.start = self.end = 0
            if self.end < length:
                self._ensure_cols(length + 1)
                self._relocate(self.start + length - self.end)
            row = self.rows
            self.valid[row] = False
            self.valid[row, self.end - length : self.end] = True
            self.lengths[row] = length
        row, first_column = self.rows, self.end - length
        dev = self.device
        columns = torch.arange(first_column + start, first_column + start + count, device=dev)
        mask = torch.ones(count, start + count, dtype=torch.bool, device=dev).tril(diagonal=start)
        self._pass = _Pass(
            decode=0,
            prompt_lengths=[count],
            row_index=torch.full((count,), row, device=dev),
            column_index=columns,
            read=slice(0),
            prompt_mask=mask[None, None],
            chunk_keys=(row, slice(first_column, first_column + start + count)),
        )
        self._joining = [length]
        return torch.arange(start, start + count, device=dev).unsqueeze(0)

    def commit(self) -> None:
        """The pass ran: advance the shared end, make joining rows live (a chunked prompt's row with
        its last chunk)."""
        plan = self._pass
        assert plan is not None
        if plan.decode:
            self.end += 1
            self.lengths[: plan.decode] += 1
        complete = plan.chunk_keys is None or plan.chunk_keys[1].stop == self.end
        if self._joining and complete:
            first_column = self.end - max(self._joining)
            self.start = min(self.start, first_column) if self.rows else first_column
            self.rows += len(self._joining)
            self._joining = []
        self._pass = None

    def remove_rows(self, rows: Sequence[int]) -> list[tuple[int, int]]:
        """Drop rows; return the (from, to) moves made so the caller can renumber its own mapping."""
        moves = []
        for row in sorted(rows, reverse=True):
            last = self.rows - 1
            if row != last:
                self._copy_row(last, row)
                moves.append((last, row))
            self.rows -= 1
        if self.rows == 0:
            self.start = self.end = 0
        else:
            self.start = self.end - int(self.lengths[: self.rows].max())
        return moves

    def clear(self) -> None:
        self.rows = self.start = self.end = 0
        self._pass = None
        self._joining = []

    # --- storage --------------------------------------------------------------------------------------
    def _allocate(self, like: torch.Tensor) -> torch.Tensor:
        _, heads, _, dim = like.shape
        return torch.zeros(self._cap_rows, heads, self._cap_cols, dim, dtype=like.dtype, device=self.device)

    def _copy_row(self, source: int, dest: int) -> None:
        window = slice(self.start, self.end)
        for buffers in (self._keys, self._values):
            for buf in buffers:
                if buf is not None:
                    buf[dest, :, window] = buf[source, :, window]
        self.valid[dest] = self.valid[source]
        self.lengths[dest] = self.lengths[source]

    def _make_room_right(self) -> None:
        """The window touches the right edge: move it back to column 0, or grow when it fills the buffer."""
        if self.start > 0:
            self._relocate(0)
        else:
            self._ensure_cols(self.end + 1)

    def _relocate(self, new_start: int) -> None:
        """Move the live window [start, end) so that it begins at new_start."""
        if new_start == self.start:
            return
        rows, old = slice(0, self.rows), slice(self.start, self.end)
        new = slice(new_start, new_start + (self.end - self.start))
        for buffers in (self._keys, self._values):
            for buf in buffers:
                if buf is not None:
                    buf[rows, :, new] = buf[rows, :, old].clone()
        moved = self.valid[rows, old].clone()
        self.valid[rows] = False
        self.valid[rows, new] = moved
        self.end = new.stop
        self.start = new_start

    def _ensure_rows(self, needed: int) -> None:
        if needed > self.max_rows:
            raise ValueError(f"batch of {needed} rows exceeds the cache's {self.max_rows}")
        if needed > self._cap_rows:
            self._grow(min(self.max_rows, max(needed, 2 * self._cap_rows)), self._cap_cols)

    def _ensure_cols(self, needed: int) -> None:
        if needed > self.max_columns + 1:
            raise ValueError(f"{needed} columns exceed the cache's {self.max_columns}")
        if needed > self._cap_cols:
            self._grow(self._cap_rows, min(self.max_columns + 1, max(needed, 2 * self._cap_cols)))

    def _grow(self, cap_rows: int, cap_cols: int) -> None:
        def grown(old: torch.Tensor) -> torch.Tensor:
            shape = (cap_rows, old.shape[1], cap_cols, old.shape[3])
            new = torch.zeros(shape, dtype=old.dtype, device=old.device)
            new[: self._cap_rows, :, : self._cap_cols] = old
            return new

        self._keys = [grown(b) if b is not None else None for b in self._keys]
        self._values = [grown(b) if b is not None else None for b in self._values]
        valid = torch.zeros(cap_rows, cap_cols, dtype=torch.bool, device=self.device)
        valid[: self._cap_rows, : self._cap_cols] = self.valid
        lengths = torch.zeros(cap_rows, dtype=torch.long, device=self.device)
        lengths[: self._cap_rows] = self.lengths
        self.valid, self.lengths = valid, lengths
        self._cap_rows, self._cap_cols = cap_rows, cap_cols

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in (*self._keys, *self._values) if b is not None)

    # --- the forward pass's context -------------------------------------------------------------------
    def activate(self) -> contextvars.Token:
        """Make this cache the one the registered attention function uses, for one forward pass."""
        return _active.set(self)

    @staticmethod
    def deactivate(token: contextvars.Token) -> None:
        _active.reset(token)


def _aligned_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    cache = _active.get()
    if cache is None:  # the model used outside the engine (a plain forward pass): ordinary attention
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    layer = cast(int, module.layer_idx)  # every attention module of a transformers model has one
    return cache.attend(layer, query, key, value, scaling), None


AttentionInterface.register(ATTENTION_NAME, _aligned_attention)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
