"""Write a Llama-family model and its byte-level BPE tokenizer as one GGUF file (llama.cpp's format,
which transformers reads back for the Llama family), with float32 tensors so nothing is lost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


class GGUFExportError(ValueError):
    pass


def _permute_for_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores q and k projections with each head's rotary halves interleaved."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _merges(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise GGUFExportError("only byte-level BPE tokenizers are exported to GGUF here")
    return [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]


def export_gguf(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path, name: str) -> None:
    config = model.config
    if config.model_type != "llama":
        raise GGUFExportError(f"GGUF export supports the Llama family, not {config.model_type}")
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope_parameters: dict[str, Any] = getattr(config, "rope_parameters", None) or {}
    rope_theta: float | None = rope_parameters.get("rope_theta")
    if not rope_theta:  # an older transformers keeps it on the config itself
        rope_theta = getattr(config, "rope_theta", 10000.0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_vocab_size(len(tokenizer))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    vocab = len(tokenizer)
    special = set(tokenizer.all_special_ids)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokenizer.convert_ids_to_tokens(list(range(vocab))))
    writer.add_token_types(
        [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(vocab)]
    )
    writer.add_token_merges(_merges(tokenizer))
    for setter, token_id in (
        (writer.add_bos_token_id, tokenizer.bos_token_id),
        (writer.add_eos_token_id, tokenizer.eos_token_id),
        (writer.add_pad_token_id, tokenizer.pad_token_id),
    ):
        if token_id is not None:
            setter(token_id)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
    if "lm_head.weight" not in state:  # tied: GGUF readers default to untied, so write the head out
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    for hf_name, tensor in state.items():
        data = tensor.detach().to(torch.float32).numpy()
        if hf_name.endswith("self_attn.q_proj.weight"):
            data = _permute_for_rope(data, heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            data = _permute_for_rope(data, kv_heads)
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise GGUFExportError(f"no GGUF name for tensor {hf_name}")
        writer.add_tensor(gguf_name, np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
