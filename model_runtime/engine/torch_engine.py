"""The torch/transformers engine: a Hugging Face causal LM driven step by step over an AlignedKVCache."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from model_runtime.config import ModelSettings
from model_runtime.corpus import load_corpus
from model_runtime.engine import int8
from model_runtime.engine.agreement import (
    MIN_AGREEMENT,
    SAMPLE_TEXTS,
    SAMPLE_TOKENS,
    logit_agreement,
    sample_sequences,
    teacher_forced,
)
from model_runtime.engine.base import EngineInfo, ModelLoadError
from model_runtime.engine.kv_cache import ATTENTION_NAME, NO_MASK, AlignedKVCache
from model_runtime.engine.loading import (
    ModelFormat,
    context_length,
    detect_format,
    eos_token_ids,
    load_config,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)

log = logging.getLogger(__name__)


class TorchEngine:
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        info: EngineInfo,
        max_batch: int,
        prefill_chunk: int = 4096,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.device = model.device
        self.prefill_chunk = prefill_chunk
        self.cache = AlignedKVCache(max_batch, info.max_context, self.device, model.dtype)
        self._row_of: dict[int, int] = {}
        self._id_at: list[int] = []

    @torch.inference_mode()
    def step(
        self,
        decode_ids: Sequence[int],
        decode_tokens: Sequence[int],
        new_ids: Sequence[int],
        new_prompts: Sequence[Sequence[int]],
    ) -> torch.Tensor:
        """One forward pass: the next token of every live sequence (decode_ids must be all of them, or
        none) and the prompts of joining ones. Returns float32 logits [len(decode_ids) + len(new_ids),
        vocab]: decode rows in the order given, then the new sequences."""
        if decode_ids and len(decode_ids) != self.cache.rows:
            raise ValueError(f"decode needs every live sequence ({self.cache.rows}), got {len(decode_ids)}")
        if len(new_prompts) == 1 and len(new_prompts[0]) > self.prefill_chunk:
            decoded = self.step(decode_ids, decode_tokens, [], []) if decode_ids else None
            joined = self._prefill_in_chunks(new_ids[0], new_prompts[0])
            return joined if decoded is None else torch.cat([decoded, joined])
        rows = [self._row_of[s] for s in decode_ids]
        in_order = rows == list(range(len(rows)))
        tokens = list(decode_tokens)
        if not in_order:
            by_row = [0] * len(rows)
            for row, token in zip(rows, decode_tokens, strict=True):
                by_row[row] = token
            tokens = by_row
        positions, keep = self.cache.plan_step(len(decode_ids), [len(p) for p in new_prompts])
        packed = torch.tensor([tokens + [t for p in new_prompts for t in p]], device=self.device)
        logits = self._forward(packed, positions, keep)
        self.cache.commit()
        self._add_rows(new_ids)
        if not in_order:
            order = torch.tensor(
                rows + list(range(len(rows), len(rows) + len(new_ids))), device=logits.device
            )
            logits = logits.index_select(0, order)
        return logits

    def prefill(self, seq_ids: Sequence[int], prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Add sequences while no other is live (a convenience for tests and probes)."""
        return self.step([], [], seq_ids, prompts)

    def decode(self, seq_ids: Sequence[int], tokens: Sequence[int]) -> torch.Tensor:
        return self.step(seq_ids, tokens, [], [])

    def _prefill_in_chunks(self, seq_id: int, prompt: Sequence[int]) -> torch.Tensor:
        logits = None
        for start in range(0, len(prompt), self.prefill_chunk):
            piece = list(prompt[start : start + self.prefill_chunk])
            positions = self.cache.plan_chunk(len(prompt), start, len(piece))
            logits = self._forward(
                torch.tensor([piece], device=self.device), positions, torch.tensor([len(piece) - 1])
            )
            self.cache.commit()
        assert logits is not None  # a prompt has a token at least
        self._add_rows([seq_id])
        return logits

    def _add_rows(self, seq_ids: Sequence[int]) -> None:
        for seq_id in seq_ids:
            self._row_of[seq_id] = len(self._id_at)
            self._id_at.append(seq_id)

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

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Logits [len(keep), vocab] in float32 at the given positions of the packed pass."""
        token = self.cache.activate()
        try:
            out = self.model(
                input_ids=input_ids,
                attention_mask=NO_MASK,
                position_ids=positions,
                cache=self.cache,
                use_cache=True,
                logits_to_keep=keep,
            )
        finally:
            self.cache.deactivate(token)
        return out.logits[0].float()


def load_causal_lm(
    fmt: ModelFormat, dtype: torch.dtype, device: torch.device, trust_remote_code: bool = False
) -> PreTrainedModel:
    """The model of a folder in any torch-loadable format, with our attention, in eval mode."""
    config = load_config(fmt, trust_remote_code)
    try:
        if fmt.kind == "int8":
            if device.type != "cpu":
                raise ModelLoadError(
                    f"{fmt.folder}: a dynamic int8 model runs on the CPU only (model.device)"
                )
            model = int8.load(fmt.folder, config, ATTENTION_NAME)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                fmt.folder,
                config=config,
                gguf_file=fmt.gguf_file,
                dtype=dtype,
                local_files_only=True,
                trust_remote_code=trust_remote_code,
                weights_only=True,  # a .bin checkpoint may hold tensors only, never code
                use_safetensors=True if fmt.kind == "safetensors" else None,
                attn_implementation=ATTENTION_NAME,
            )
    except ValueError as exc:
        # transformers says "... requires you to execute code ... trust_remote_code", or that the
        # architecture does not take a custom attention function, here.
        raise ModelLoadError(f"{fmt.folder}: {exc}") from exc
    if not getattr(model, "_supports_attention_backend", False):
        raise ModelLoadError(
            f"{fmt.folder}: {type(model).__name__} does not take a pluggable attention function"
        )
    return model.to(device).eval()  # type: ignore[arg-type]  # transformers' decorator hides to()'s signature


def _agreement_in_bf16(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, info: EngineInfo, texts: Sequence[str]
) -> dict:
    """Cast a float32 model to bfloat16 in place, and say how far its predictions moved: the same
    teacher-forced comparison on the same sample as `convert --to bf16` records."""
    before = TorchEngine(model, tokenizer, info, SAMPLE_TEXTS)
    sequences = sample_sequences(before, texts)
    source = teacher_forced(before, sequences)
    model.to(torch.bfloat16)  # type: ignore[arg-type]  # transformers' decorator hides to()'s signature
    after = TorchEngine(model, tokenizer, info, SAMPLE_TEXTS)
    target = teacher_forced(after, sequences)
    return {
        "from": "float32",
        "to": "bfloat16",
        **logit_agreement(source, target),
        "min_agreement": MIN_AGREEMENT,
        "sample": f"{len(sequences)} held-out texts x {SAMPLE_TOKENS} tokens, teacher-forced",
    }


def _native_bf16(
    settings: ModelSettings,
    fmt: ModelFormat,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    info: EngineInfo,
) -> tuple[PreTrainedModel, dict]:
    """dtype auto on a CPU that computes bfloat16 natively: a precision change, so it is checked as a
    conversion is, and the model stays in float32 (loaded again) if it would lose top-1 agreement."""
    try:
        texts = load_corpus().held_out
    except FileNotFoundError as exc:
        return model, {"from": "float32", "to": "bfloat16", "kept": False, "reason": str(exc)}
    check = _agreement_in_bf16(model, tokenizer, info, texts)
    check["kept"] = check["top1_agreement"] >= MIN_AGREEMENT
    if not check["kept"]:
        model = load_causal_lm(fmt, torch.float32, model.device, settings.trust_remote_code)
    return model, check


def load_torch_engine(settings: ModelSettings, max_batch: int, prefill_chunk: int = 4096) -> TorchEngine:
    fmt = detect_format(Path(settings.path))
    if fmt.kind == "onnx":
        raise ModelLoadError(f"{fmt.folder}: an ONNX export runs on the onnx engine, not torch")
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    # A full-precision checkpoint that dtype auto puts in bfloat16 on a CPU: checked as a conversion.
    checked = (
        settings.dtype == "auto"
        and device.type == "cpu"
        and dtype == torch.bfloat16
        and fmt.kind in ("safetensors", "pytorch")
    )
    started = time.perf_counter()
    tokenizer = load_tokenizer(fmt, settings.trust_remote_code)
    model = load_causal_lm(fmt, torch.float32 if checked else dtype, device, settings.trust_remote_code)

    def engine_info() -> EngineInfo:
        return EngineInfo(
            max_context=context_length(model.config, settings.max_context),
            eos_token_ids=eos_token_ids(fmt, tokenizer),
            device=str(device),
            dtype="int8" if fmt.kind == "int8" else str(model.dtype).removeprefix("torch."),
            parameters=sum(p.numel() for p in model.parameters()),
            load_seconds=time.perf_counter() - started,
        )

    dtype_check = None
    if checked:
        model, dtype_check = _native_bf16(settings, fmt, model, tokenizer, engine_info())
    info = engine_info()
    log.info(
        "loaded model",
        extra={
            "model": str(fmt.folder),
            "format": fmt.kind,
            "device": info.device,
            "dtype": info.dtype,
            "dtype_check": dtype_check,
            "parameters": info.parameters,
            "load_seconds": round(info.load_seconds, 3),
        },
    )
    return TorchEngine(model, tokenizer, info, max_batch, prefill_chunk)
