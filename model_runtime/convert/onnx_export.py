"""Export a Hugging Face decoder to the one-graph ONNX step that engine/onnx_engine.py runs."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
from torch.export import Dim
from transformers import PreTrainedModel

from model_runtime.engine.onnx_engine import SPEC

log = logging.getLogger(__name__)


class _ExportCache:
    """During export, attention sees the past and the new keys together; the new ones are returned."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.past = (keys, values)
        self.new: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.new[layer_idx] = (key, value)
        keys, values = self.past
        return torch.cat([keys[layer_idx], key], dim=2), torch.cat([values[layer_idx], value], dim=2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.past[0].shape[3]


class _Step(torch.nn.Module):
    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        past_keys: torch.Tensor,
        past_values: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cache = _ExportCache(past_keys, past_values)
        out = self.model(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        layers = range(len(cache.new))
        return (
            out.logits[:, -1, :],
            torch.stack([cache.new[i][0] for i in layers]),
            torch.stack([cache.new[i][1] for i in layers]),
        )


def export_onnx(model: PreTrainedModel, out: Path) -> None:
    """Write out/model.onnx and out/onnx_engine.json; model must use standard (sdpa) attention."""
    config = model.config
    layers = config.num_hidden_layers
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    batch, query, past = 2, 3, 4
    example = (
        torch.randint(0, config.vocab_size, (batch, query)),
        torch.arange(past, past + query).expand(batch, query),
        torch.ones(batch, 1, query, past + query, dtype=torch.bool),
        torch.zeros(layers, batch, kv_heads, past, head_dim),
        torch.zeros(layers, batch, kv_heads, past, head_dim),
    )
    b, q, p, total = Dim("batch"), Dim("query"), Dim("past"), Dim("total")
    dynamic = {
        "input_ids": {0: b, 1: q},
        "position_ids": {0: b, 1: q},
        "attention_mask": {0: b, 2: q, 3: total},
        "past_keys": {1: b, 3: p},
        "past_values": {1: b, 3: p},
    }
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Step(model.eval()),
            example,
            str(out / "model.onnx"),
            input_names=list(dynamic),
            output_names=["logits", "new_keys", "new_values"],
            dynamic_shapes=dynamic,
            dynamo=True,
            verbose=False,
        )
    spec = {
        "layers": layers,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (out / SPEC).write_text(json.dumps(spec, indent=2) + "\n")
