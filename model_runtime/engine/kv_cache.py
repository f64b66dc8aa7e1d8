"""A key/value cache for continuous batching over a standard Hugging Face decoder.

Every live sequence's tokens end at the same column of one preallocated buffer per layer ("right
aligned"), so one decode step writes one column for the whole batch and attention reads a view: no
per-step concatenation, as Hugging Face's DynamicCache does. A sequence that joins later is prefilled
into fresh rows whose tokens end at that same column; the columns to its left are masked out. A finished
sequence's row is filled by moving the last row into it, so live rows stay contiguous. When the window
reaches the buffer's right edge it is moved back to column 0 (or the buffer grows), which happens once
per many steps.

The model sees this object through the one method it calls, `update(key, value, layer_idx)`, and through
the 4D attention mask and position ids that `prepare_*` return.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class _Target:
    rows: slice
    write: slice
    read: slice


class AlignedKVCache:
    def __init__(self, max_rows: int, max_columns: int, device: torch.device, dtype: torch.dtype) -> None:
        self.max_rows = max_rows
        self.max_columns = max_columns
        self.device = device
        self.dtype = dtype
        self.rows = 0  # live rows are [0, rows)
        self.start = 0  # first column any live row uses
        self.end = 0  # one past the last written column; every live row ends here
        self._cap_rows = min(4, max_rows)
        self._cap_cols = min(128, max_columns)
        self._keys: list[torch.Tensor | None] = []
        self._values: list[torch.Tensor | None] = []
        self.valid = torch.zeros(self._cap_rows, self._cap_cols, dtype=torch.bool, device=device)
        self.lengths = torch.zeros(self._cap_rows, dtype=torch.long, device=device)
        self._target: _Target | None = None

    # --- what the model calls -------------------------------------------------------------------------
    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *args: object,
        **kwargs: object,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        target = self._target
        assert target is not None, "prepare_prefill or prepare_decode must run before the forward pass"
        while len(self._keys) <= layer_idx:
            self._keys.append(None)
            self._values.append(None)
        keys, values = self._keys[layer_idx], self._values[layer_idx]
        if keys is None or values is None:
            keys = self._allocate(key_states)
            values = self._allocate(value_states)
            self._keys[layer_idx], self._values[layer_idx] = keys, values
        keys[target.rows, :, target.write] = key_states
        values[target.rows, :, target.write] = value_states
        return keys[target.rows, :, target.read], values[target.rows, :, target.read]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.end - self.start

    # --- what the engine calls ------------------------------------------------------------------------
    def prepare_prefill(self, lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Make room for len(lengths) new rows padded to max(lengths); return (mask [n,1,L,L] bool,
        position_ids [n,L]). The rows become live on commit_prefill()."""
        n, width = len(lengths), max(lengths)
        self._ensure_rows(self.rows + n)
        if self.rows == 0:
            self.start = self.end = 0
        if self.end < width:
            # The new rows need `width` columns left of the shared end: move the live window right.
            self._ensure_cols(width + 1)
            self._relocate(self.start + width - self.end)
        self._ensure_cols(self.end + 1)
        first, last = self.rows, self.rows + n
        columns = slice(self.end - width, self.end)
        lens = torch.tensor(lengths, dtype=torch.long, device=self.device)
        offsets = torch.arange(width, device=self.device)
        real = offsets.unsqueeze(0) >= (width - lens).unsqueeze(1)  # [n, width]: left padding is False
        self.valid[first:last] = False
        self.valid[first:last, columns] = real
        self.lengths[first:last] = lens
        causal = torch.ones(width, width, dtype=torch.bool, device=self.device).tril()
        mask = causal.unsqueeze(0) & real.unsqueeze(1)
        # A padding query must attend somewhere or attention yields NaN; let it see itself (its output
        # is never read, and no real query attends to a padding key).
        mask |= torch.eye(width, dtype=torch.bool, device=self.device).unsqueeze(0)
        positions = (offsets.unsqueeze(0) - (width - lens).unsqueeze(1)).clamp(min=0)
        self._target = _Target(rows=slice(first, last), write=columns, read=columns)
        return mask.unsqueeze(1), positions

    def commit_prefill(self, count: int) -> None:
        self.start = min(self.start, self.end - int(self.lengths[self.rows : self.rows + count].max()))
        self.rows += count
        self._target = None

    def prepare_decode(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Open one column for every live row; return (mask [rows,1,1,W] bool, position_ids [rows,1])."""
        if self.end >= self._cap_cols:
            if self.start > 0:
                self._relocate(0)
            else:
                self._ensure_cols(self.end + 1)
        rows = slice(0, self.rows)
        self.valid[rows, self.end] = True
        self._target = _Target(
            rows=rows, write=slice(self.end, self.end + 1), read=slice(self.start, self.end + 1)
        )
        mask = self.valid[rows, self.start : self.end + 1]
        return mask[:, None, None, :], self.lengths[rows].unsqueeze(1)

    def commit_decode(self) -> None:
        self.end += 1
        self.lengths[: self.rows] += 1
        self._target = None

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
        self._target = None

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
