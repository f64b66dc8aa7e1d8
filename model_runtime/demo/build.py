"""Build the demo model: a byte-level BPE tokenizer and a small Llama, trained here (about a minute on
2 cores: 300 steps of 8 windows at about 0.15 s each).

Nothing is downloaded. The result is an ordinary Hugging Face folder (config.json, model.safetensors,
tokenizer.json with a chat template, generation_config.json) plus `demo-model.json`, the build record
(recipe, corpus source, loss, held-out perplexity, time), so every loading path is tested on real files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from model_runtime.corpus import Corpus, load_corpus, split_first_sentence
from model_runtime.registry.manifest import MANIFEST, build_manifest, write_manifest
from model_runtime.staging import staged

log = logging.getLogger(__name__)

BUILD_RECORD = "demo-model.json"
END_OF_TEXT, END_OF_TURN = "<|endoftext|>", "<|end|>"
ROLES = ("system", "user", "assistant")
SPECIAL_TOKENS = [END_OF_TEXT, END_OF_TURN, *(f"<|{r}|>" for r in ROLES)]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the demo model; its fingerprint names a cached build."""

    vocab_size: int = 2048
    hidden_size: int = 192
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 512
    context: int = 512
    steps: int = 300
    # Small batches and a short second-moment memory learn more per token at this size. Held-out
    # perplexity and build time on 2 cores: 300 steps of 8, 114 in 51 s; 400 of 8, 99 in 72 s; the
    # recipe before (400 of 16, Adam's default 0.999), 85 in 142 s; 100 of 16, 255 in 34 s.
    batch_size: int = 8
    window: int = 128
    learning_rate: float = 5e-3
    adam_beta2: float = 0.95
    seed: int = 0

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def train_tokenizer(corpus: Corpus, vocab_size: int) -> PreTrainedTokenizerFast:
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(corpus.train, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def training_examples(corpus: Corpus, tokenizer: PreTrainedTokenizerFast) -> list[list[int]]:
    """Each paragraph as plain text, and once more as a chat turn (first sentence asks, the rest answers),
    so that the model continues both raw prompts and the chat template."""
    texts = [p + END_OF_TEXT for p in corpus.train]
    for paragraph in corpus.train:
        if split := split_first_sentence(paragraph):
            question, answer = split
            chat = tokenizer.apply_chat_template(
                [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                tokenize=False,
            )
            texts.append(cast(str, chat))  # tokenize=False: the rendered text
    return [tokenizer(t)["input_ids"] for t in texts]


def llama_config(recipe: Recipe, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.kv_heads,
        intermediate_size=recipe.intermediate_size,
        max_position_embeddings=recipe.context,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def train_model(
    config: LlamaConfig,
    examples: Sequence[Sequence[int]],
    recipe: Recipe,
    example_weights: Sequence[float] | None = None,
) -> tuple[LlamaForCausalLM, float]:
    """Train on windows of the concatenated examples; a window starts at an example drawn with
    probability proportional to its weight (uniform by default; bootstrap counts give bagging, losses
    give boosting). Returns the model and its final smoothed training loss."""
    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)  # noqa: S311 - training data order, not a secret
    stream = torch.tensor([t for example in examples for t in example], dtype=torch.long)
    starts, offset = [], 0
    for example in examples:
        starts.append(min(offset, len(stream) - recipe.window - 1))
        offset += len(example)
    weights = list(example_weights) if example_weights is not None else [1.0] * len(examples)
    model = LlamaForCausalLM(config)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.learning_rate, betas=(0.9, recipe.adam_beta2), weight_decay=0.01
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.learning_rate, total_steps=recipe.steps, pct_start=0.1
    )
    smoothed = math.nan
    for _ in range(recipe.steps):
        chosen = rng.choices(starts, weights=weights, k=recipe.batch_size)
        batch = torch.stack([stream[s : s + recipe.window] for s in chosen])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        smoothed = loss.item() if math.isnan(smoothed) else 0.9 * smoothed + 0.1 * loss.item()
    model.eval()
    return model, smoothed


@torch.inference_mode()
def perplexity(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> float:
    """Token-weighted perplexity of texts, each scored on its own (truncated to the model's context)."""
    limit = model.config.max_position_embeddings
    total_loss, total_tokens = 0.0, 0
    for text in texts:
        ids = tokenizer(text + END_OF_TEXT)["input_ids"][:limit]
        if len(ids) < 2:
            continue
        batch = torch.tensor([ids])
        loss = model(input_ids=batch, labels=batch).loss.item()
        total_loss += loss * (len(ids) - 1)
        total_tokens += len(ids) - 1
    return math.exp(total_loss / total_tokens)


def is_current(out_dir: Path, recipe: Recipe) -> bool:
    record = out_dir / BUILD_RECORD
    try:
        built = json.loads(record.read_text())["fingerprint"] == recipe.fingerprint()
    except (OSError, ValueError, KeyError):
        return False
    return built and (out_dir / MANIFEST).is_file()


def write_model(
    folder: Path, model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, record: dict, name: str
) -> dict:
    """Write a trained model as an ordinary Hugging Face folder with its build record and manifest;
    returns the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[
            tokenizer.convert_tokens_to_ids(END_OF_TEXT),
            tokenizer.convert_tokens_to_ids(END_OF_TURN),
        ],
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(folder)
    (folder / BUILD_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    manifest = build_manifest(
        folder, name, source=f"model-runtime demo-model, recipe {record['fingerprint']}"
    )
    write_manifest(folder, manifest)
    return manifest


def build_demo_model(out_dir: Path, recipe: Recipe = Recipe(), corpus: Corpus | None = None) -> dict:
    """Build into a temporary folder beside out_dir, then rename: a half-built model is never seen."""
    started = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    corpus = corpus or load_corpus()
    tokenizer = train_tokenizer(corpus, recipe.vocab_size)
    model, loss = train_model(llama_config(recipe, tokenizer), training_examples(corpus, tokenizer), recipe)
    record = {
        "fingerprint": recipe.fingerprint(),
        "recipe": asdict(recipe),
        "corpus": corpus.source,
        "final_train_loss": round(loss, 4),
        "held_out_perplexity": round(perplexity(model, tokenizer, corpus.held_out), 3),
        "build_seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
    }
    with staged(out_dir) as staging:
        record["version"] = write_model(staging, model, tokenizer, record, "demo")["version"]
    log.info("built demo model", extra=record)
    return record
