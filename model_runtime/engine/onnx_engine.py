"""The ONNX engine: an exported decoder step run by onnxruntime, behind the same contract as torch's.

The export (convert/onnx_export.py) is one graph: (input_ids [B,q], position_ids [B,q], a boolean
attention mask [B,1,q,past+q], past keys and values [layers,B,kv_heads,past,dim]) -> (logits of the
last position [B,vocab], the q new keys and values). This engine keeps the past of every live
sequence in one right-aligned batch (as the torch engine's cache does), feeds a decode step to all of
them at once and prefills joining prompts in a padded batch of their own.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from model_runtime.config import ModelSettings
from model_runtime.engine.base import EngineInfo, ModelLoadError
from model_runtime.engine.loading import (
    context_length,
    detect_format,
    eos_token_ids,
    load_config,
    load_tokenizer,
)

log = logging.getLogger(__name__)

SPEC = "onnx_engine.json"


class OnnxEngine:
    def __init__(
        self, session: Any, spec: dict, tokenizer: PreTrainedTokenizerBase, info: EngineInfo
    ) -> None:
        # session: an onnxruntime.InferenceSession; onnxruntime (the formats extra's) has no type hints
        self.session = session
        self.tokenizer = tokenizer
        self.info = info
        self._shape = (spec["layers"], spec["kv_heads"], spec["head_dim"])
        self.keys = self.values = self._no_past(0)  # [layers, rows, kv_heads, columns, dim]
        self.valid = np.zeros((0, 0), dtype=bool)  # [rows, columns]
        self.lengths = np.zeros(0, dtype=np.int64)
        self.ids: list[int] = []

    def _no_past(self, rows: int) -> np.ndarray:
        layers, kv_heads, dim = self._shape
        return np.zeros((layers, rows, kv_heads, 0, dim), dtype=np.float32)

    def _run(
        self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, keys: np.ndarray, values: np.ndarray
    ) -> list[np.ndarray]:
        return self.session.run(
            None,
            {
                "input_ids": ids,
                "position_ids": positions,
                "attention_mask": mask,
                "past_keys": keys,
                "past_values": values,
            },
        )

    def step(
        self,
        decode_ids: Sequence[int],
        decode_tokens: Sequence[int],
        new_ids: Sequence[int],
        new_prompts: Sequence[Sequence[int]],
    ) -> torch.Tensor:
        if decode_ids and sorted(decode_ids) != sorted(self.ids):
            raise ValueError(f"decode needs every live sequence ({len(self.ids)}), got {len(decode_ids)}")
        logits = []
        if decode_ids:
            logits.append(self._decode(decode_ids, decode_tokens))
        if new_ids:
            logits.append(self._prefill(new_ids, new_prompts))
        return torch.from_numpy(np.concatenate(logits)).float()

    def prefill(self, seq_ids: Sequence[int], prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        return self.step([], [], seq_ids, prompts)

    def decode(self, seq_ids: Sequence[int], tokens: Sequence[int]) -> torch.Tensor:
        return self.step(seq_ids, tokens, [], [])

    def _decode(self, seq_ids: Sequence[int], tokens: Sequence[int]) -> np.ndarray:
        rows = np.array([self.ids.index(s) for s in seq_ids])
        by_row = np.zeros(len(self.ids), dtype=np.int64)
        by_row[rows] = tokens
        valid = np.concatenate([self.valid, np.ones((len(self.ids), 1), dtype=bool)], axis=1)
        out = self._run(
            by_row[:, None], self.lengths[:, None].copy(), valid[:, None, None, :], self.keys, self.values
        )
        self.keys = np.concatenate([self.keys, out[1]], axis=3)
        self.values = np.concatenate([self.values, out[2]], axis=3)
        self.valid, self.lengths = valid, self.lengths + 1
        return out[0][rows]

    def _prefill(self, seq_ids: Sequence[int], prompts: Sequence[Sequence[int]]) -> np.ndarray:
        width = max(len(p) for p in prompts)
        lengths = np.array([len(p) for p in prompts], dtype=np.int64)
        ids = np.array([[0] * (width - len(p)) + list(p) for p in prompts], dtype=np.int64)
        offsets = np.arange(width)
        real = offsets[None, :] >= (width - lengths)[:, None]
        mask = np.tril(np.ones((width, width), dtype=bool))[None] & real[:, None, :]
        mask |= np.eye(width, dtype=bool)[None]  # a padding query sees itself (its output is unused)
        positions = np.clip(offsets[None, :] - (width - lengths)[:, None], 0, None)
        empty = self._no_past(len(prompts))
        out = self._run(ids, positions, mask[:, None], empty, empty)
        self._join(seq_ids, out[1], out[2], real, lengths)
        return out[0]

    def _join(
        self,
        seq_ids: Sequence[int],
        keys: np.ndarray,
        values: np.ndarray,
        real: np.ndarray,
        lengths: np.ndarray,
    ) -> None:
        """Append new rows, padding on the left whichever side is narrower so that all end together."""
        old, new = self.keys.shape[3], keys.shape[3]
        width = max(old, new)

        def pad(array: np.ndarray, to: int) -> np.ndarray:
            extra = to - array.shape[3]
            return array if extra == 0 else np.pad(array, ((0, 0), (0, 0), (0, 0), (extra, 0), (0, 0)))

        def pad_mask(mask: np.ndarray, to: int) -> np.ndarray:
            return np.pad(mask, ((0, 0), (to - mask.shape[1], 0)))

        self.keys = np.concatenate([pad(self.keys, width), pad(keys, width)], axis=1)
        self.values = np.concatenate([pad(self.values, width), pad(values, width)], axis=1)
        self.valid = np.concatenate([pad_mask(self.valid, width), pad_mask(real, width)], axis=0)
        self.lengths = np.concatenate([self.lengths, lengths])
        self.ids.extend(seq_ids)

    def release(self, seq_ids: Sequence[int]) -> None:
        keep = [i for i, s in enumerate(self.ids) if s not in set(seq_ids)]
        if len(keep) == len(self.ids):
            return
        self.keys, self.values = self.keys[:, keep], self.values[:, keep]
        self.valid, self.lengths = self.valid[keep], self.lengths[keep]
        self.ids = [self.ids[i] for i in keep]
        used = self.valid.any(axis=0)
        first = int(np.argmax(used)) if used.any() else self.valid.shape[1]
        if first:  # drop columns no live row uses any more
            self.keys, self.values, self.valid = (
                self.keys[:, :, :, first:],
                self.values[:, :, :, first:],
                self.valid[:, first:],
            )

    def reset(self) -> None:
        self.keys = self.values = self._no_past(0)
        self.valid = np.zeros((0, 0), dtype=bool)
        self.lengths = np.zeros(0, dtype=np.int64)
        self.ids = []

    def close(self) -> None:
        self.reset()
        self.session = None


def load_onnx_engine(settings: ModelSettings) -> OnnxEngine:
    import onnxruntime  # the `formats` extra's, not the runtime's: only when an ONNX export is served

    fmt = detect_format(Path(settings.path))
    if fmt.kind != "onnx":
        raise ModelLoadError(f"{fmt.folder}: not an ONNX export")
    if settings.device.startswith("cuda"):
        raise ModelLoadError("model.device: the onnx engine runs on the CPU here")
    started = time.perf_counter()
    spec = json.loads((fmt.folder / SPEC).read_text())
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, (os.cpu_count() or 2) - 1)
    session = onnxruntime.InferenceSession(str(fmt.weights[0]), options, providers=["CPUExecutionProvider"])
    tokenizer = load_tokenizer(fmt, settings.trust_remote_code)
    config = load_config(fmt, settings.trust_remote_code)
    info = EngineInfo(
        max_context=context_length(config, settings.max_context),
        eos_token_ids=eos_token_ids(fmt, tokenizer),
        device="cpu",
        dtype="float32 (onnx)",
        parameters=spec.get("parameters", 0),
        load_seconds=time.perf_counter() - started,
    )
    log.info(
        "loaded model", extra={"model": str(fmt.folder), "format": "onnx", "load_seconds": info.load_seconds}
    )
    return OnnxEngine(session, spec, tokenizer, info)
