"""Model folders for tests and benchmarks: the trained demo model (cached, shared with `make demo`) and
random-weight models of standard architectures that take a second to make."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from harness.cache import CACHE, one_builder

DEMO_MODEL = Path(os.environ.get("MODEL_RUNTIME_DEMO_MODEL", CACHE / "demo-model"))
# Its int8 copy, the model demo-int8: the local fleet's second model.
DEMO_INT8_MODEL = CACHE / "demo-int8-model"


def ensure_demo_model() -> Path:
    """Build the demo model unless the cached build matches the current recipe (4 min on 2 cores), and
    its int8 copy (DEMO_INT8_MODEL) unless that is the copy of this build (seconds)."""
    with one_builder("demo-model"):
        subprocess.run(
            [sys.executable, "-m", "model_runtime", "demo-model", str(DEMO_MODEL), "--if-missing",
             "--int8", str(DEMO_INT8_MODEL)],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return DEMO_MODEL


def random_model(
    out: Path, tokenizer_from: Path, family: str = "llama", size: str = "tiny", seed: int = 0
) -> Path:
    """A real architecture with random weights, saved as safetensors with the demo tokenizer. Rebuilt
    only when out holds no model yet."""
    if (out / "config.json").is_file():
        return out
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_from)
    torch.manual_seed(seed)
    vocab = len(tokenizer)
    # "100m": the benchmark's ~100M-parameter Llama (hidden 768, 12 layers, MLP 2560); "1b": its GPU
    # mode's ~1B (hidden 2048, 16 layers, MLP 8192).
    hidden, layers, heads, mlp = {
        "tiny": (64, 2, 4, 192),
        "medium": (512, 8, 8, 1536),
        "100m": (768, 12, 12, 2560),
        "1b": (2048, 16, 16, 8192),
    }[size]
    if family == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads // 2,
            intermediate_size=mlp,
            max_position_embeddings=1024 if size in ("100m", "1b") else 512,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
        model = LlamaForCausalLM(config)
    else:
        config = GPT2Config(
            vocab_size=vocab,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_positions=256,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
        model = GPT2LMHeadModel(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
