"""The torch/transformers engine: a Hugging Face causal LM driven step by step over an AlignedKVCache."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel

from model_runtime.config import ModelSettings
from model_runtime.engine.base import EngineInfo, ModelLoadError
from model_runtime.engine.kv_cache import AlignedKVCache
from model_runtime.engine.loading import check_model_folder, context_length, resolve_device, resolve_dtype

log = logging.getLogger(__name__)

# Attention implementations that take the 4D mask we build; others (flash attention) want their own
# ragged inputs and are refused at load rather than giving wrong answers.
SUPPORTED_ATTENTION = ("sdpa", "eager")


def eos_token_ids(folder: Path, tokenizer: object) -> frozenset[int]:
    ids: set[int] = set()
    try:
        generation = GenerationConfig.from_pretrained(folder, local_files_only=True)
        eos = generation.eos_token_id
        ids.update([eos] if isinstance(eos, int) else list(eos or []))
    except OSError:
        pass  # generation_config.json is optional
    tokenizer_eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(tokenizer_eos, int):
        ids.add(tokenizer_eos)
    return frozenset(ids)


class TorchEngine:
    def __init__(self, model: PreTrainedModel, tokenizer: object, info: EngineInfo, max_batch: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.device = model.device
        self._additive_mask = model.config._attn_implementation == "eager"
        self._pad_id = int(getattr(tokenizer, "pad_token_id", None) or 0)
        self.cache = AlignedKVCache(max_batch, info.max_context, self.device, model.dtype)
        self._row_of: dict[int, int] = {}
        self._id_at: list[int] = []

    @torch.inference_mode()
    def prefill(self, seq_ids: Sequence[int], prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        width = max(len(p) for p in prompts)
        padded = [[self._pad_id] * (width - len(p)) + list(p) for p in prompts]
        mask, positions = self.cache.prepare_prefill([len(p) for p in prompts])
        logits = self._forward(torch.tensor(padded, device=self.device), mask, positions)
        for seq_id in seq_ids:
            self._row_of[seq_id] = len(self._id_at)
            self._id_at.append(seq_id)
        self.cache.commit_prefill(len(seq_ids))
        return logits

    @torch.inference_mode()
    def decode(self, seq_ids: Sequence[int], tokens: Sequence[int]) -> torch.Tensor:
        if len(seq_ids) != self.cache.rows:
            raise ValueError(f"decode needs every live sequence ({self.cache.rows}), got {len(seq_ids)}")
        rows = [self._row_of[s] for s in seq_ids]
        in_order = rows == list(range(len(rows)))
        row_index = None if in_order else torch.tensor(rows, device=self.device)
        token_tensor = torch.tensor(tokens, device=self.device)
        if row_index is not None:
            token_tensor = torch.empty_like(token_tensor).index_copy_(0, row_index, token_tensor)
        mask, positions = self.cache.prepare_decode()
        logits = self._forward(token_tensor.unsqueeze(1), mask, positions)
        self.cache.commit_decode()
        return logits if row_index is None else logits.index_select(0, row_index)

    @torch.inference_mode()
    def release(self, seq_ids: Sequence[int]) -> None:
        rows = [self._row_of.pop(s) for s in seq_ids if s in self._row_of]
        if not rows:
            return
        for source, dest in self.cache.remove_rows(rows):
            moved = self._id_at[source]
            self._id_at[dest] = moved
            self._row_of[moved] = dest
        del self._id_at[self.cache.rows :]

    def reset(self) -> None:
        self.cache.clear()
        self._row_of.clear()
        self._id_at.clear()

    def close(self) -> None:
        self.reset()
        del self.model, self.cache
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self._additive_mask:
            mask = torch.zeros(mask.shape, dtype=self.model.dtype, device=self.device).masked_fill_(
                ~mask, torch.finfo(self.model.dtype).min
            )
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :].float()


def load_torch_engine(settings: ModelSettings, max_batch: int, attention: str = "sdpa") -> TorchEngine:
    folder = Path(settings.path)
    weights = check_model_folder(folder)
    if attention not in SUPPORTED_ATTENTION:
        raise ModelLoadError(f"attention {attention!r} is not supported; use one of {SUPPORTED_ATTENTION}")
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    started = time.perf_counter()
    try:
        config = AutoConfig.from_pretrained(
            folder, local_files_only=True, trust_remote_code=settings.trust_remote_code
        )
        tokenizer = AutoTokenizer.from_pretrained(
            folder, local_files_only=True, trust_remote_code=settings.trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            config=config,
            dtype=dtype,
            local_files_only=True,
            trust_remote_code=settings.trust_remote_code,
            weights_only=True,  # a .bin checkpoint may hold tensors only, never code
            use_safetensors=weights.kind == "safetensors",
            attn_implementation=attention,
        )
    except ValueError as exc:
        # transformers says "... requires you to execute code ... trust_remote_code" and similar here.
        raise ModelLoadError(f"{folder}: {exc}") from exc
    model.to(device).eval()
    seconds = time.perf_counter() - started
    info = EngineInfo(
        max_context=context_length(config, settings.max_context),
        eos_token_ids=eos_token_ids(folder, tokenizer),
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        parameters=sum(p.numel() for p in model.parameters()),
        load_seconds=seconds,
    )
    log.info(
        "loaded model",
        extra={
            "model": str(folder),
            "weights": weights.kind,
            "device": info.device,
            "dtype": info.dtype,
            "parameters": info.parameters,
            "load_seconds": round(seconds, 3),
        },
    )
    return TorchEngine(model, tokenizer, info, max_batch)
