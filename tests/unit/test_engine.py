"""The torch engine over the aligned KV cache gives the same next-token logits as a plain full forward
pass of the same model, whatever joins and leaves the batch, and across growth and relocation of the
cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_runtime.config import ModelSettings
from model_runtime.engine.base import ModelLoadError
from model_runtime.engine.cpu import computes_bf16
from model_runtime.engine.kv_cache import AlignedKVCache
from model_runtime.engine.torch_engine import TorchEngine, load_torch_engine
from tests.support.engines import EXACT

pytestmark = pytest.mark.unit

PROMPTS = [
    "This License",
    "You may copy and distribute verbatim copies of the Program's source code",
    "The",
    "Everyone is permitted to copy and distribute verbatim copies of this license document, but changing it",
    "Preamble",
]


def reference_logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


def drive(
    engine: TorchEngine, prompts: list[list[int]], joins: list[int], leaves: list[int], steps: int
) -> dict:
    """Run greedy decoding where prompt i joins at step joins[i] and leaves after leaves[i] tokens, each
    step one engine pass (every live sequence's next token plus the joining prompts). Returns, per
    sequence, the token history and the logits seen at every step."""
    seqs: dict[int, dict] = {}
    live: list[int] = []
    for step in range(steps):
        joining = [i for i, j in enumerate(joins) if j == step]
        if not (live or joining):
            continue
        logits = engine.step(
            live, [seqs[i]["tokens"][-1] for i in live], joining, [prompts[i] for i in joining]
        )
        for i in joining:
            seqs[i] = {"tokens": list(prompts[i]), "logits": []}
        for i, row in zip(live + joining, logits, strict=True):
            seqs[i]["logits"].append(row)
            seqs[i]["tokens"].append(int(row.argmax()))
        live += joining
        done = [i for i in live if len(seqs[i]["logits"]) >= leaves[i]]
        engine.release(done)
        live = [i for i in live if i not in done]
    return seqs


def assert_matches_reference(engine: TorchEngine, seqs: dict, prompts: list[list[int]]) -> None:
    for i, seq in seqs.items():
        for k, logits in enumerate(seq["logits"]):
            prefix = seq["tokens"][: len(prompts[i]) + k]
            expected = reference_logits(engine.model, prefix)
            torch.testing.assert_close(logits, expected, atol=2e-4, rtol=1e-4, msg=f"sequence {i}, token {k}")


@pytest.mark.parametrize("fixture", ["demo_model", "tiny_gpt2"])
def test_staggered_batch_matches_full_forward(
    fixture: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder: Path = request.getfixturevalue(fixture)
    engine = load_torch_engine(ModelSettings(path=str(folder), dtype=EXACT), max_batch=8)
    # A tiny starting cache forces row growth, column growth and window relocation along the way.
    engine.cache = AlignedKVCache(8, engine.info.max_context, engine.device, engine.model.dtype, 1, 8)
    relocations: list[int] = []
    relocate = engine.cache._relocate
    monkeypatch.setattr(engine.cache, "_relocate", lambda start: (relocations.append(start), relocate(start)))
    prompts = [engine.tokenizer(p)["input_ids"] for p in PROMPTS]
    seqs = drive(engine, prompts, joins=[0, 0, 3, 5, 40], leaves=[30, 6, 40, 12, 60], steps=120)
    assert len(seqs) == 5
    assert engine.cache.rows == 0
    assert engine.cache._cap_rows >= 4
    assert 0 in relocations, "the window was never moved back to column 0"
    assert any(start > 0 for start in relocations), "no late joiner needed the window moved right"
    assert_matches_reference(engine, seqs, prompts)


def test_decode_in_any_order_returns_logits_in_that_order(demo_model: Path) -> None:
    engine = load_torch_engine(ModelSettings(path=str(demo_model)), max_batch=4)
    prompts = [engine.tokenizer(p)["input_ids"] for p in PROMPTS[:3]]
    first = engine.prefill([10, 11, 12], prompts)
    tokens = [int(row.argmax()) for row in first]
    forward = engine.decode([10, 11, 12], tokens)
    engine.reset()
    engine.prefill([10, 11, 12], prompts)
    backward = engine.decode([12, 10, 11], [tokens[2], tokens[0], tokens[1]])
    torch.testing.assert_close(backward, forward[[2, 0, 1]])


def test_decode_must_cover_every_live_sequence(demo_model: Path) -> None:
    engine = load_torch_engine(ModelSettings(path=str(demo_model)), max_batch=4)
    engine.prefill([1, 2], [[5, 6], [7]])
    with pytest.raises(ValueError, match="every live sequence"):
        engine.decode([1], [3])


def test_engine_info_reads_the_folder(demo_model: Path) -> None:
    engine = load_torch_engine(ModelSettings(path=str(demo_model)), max_batch=2)
    assert engine.info.max_context == 512
    assert engine.info.dtype == ("bfloat16" if computes_bf16() else "float32")  # auto on this CPU
    assert engine.info.device == "cpu"
    eos = {engine.tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|end|>")}
    assert engine.info.eos_token_ids == eos
    capped = load_torch_engine(ModelSettings(path=str(demo_model), max_context=100), max_batch=2)
    assert capped.info.max_context == 100


def test_bfloat16_on_request(demo_model: Path) -> None:
    engine = load_torch_engine(ModelSettings(path=str(demo_model), dtype="bfloat16"), max_batch=2)
    assert engine.model.dtype == torch.bfloat16
    logits = engine.prefill([0], [engine.tokenizer("This License")["input_ids"]])
    assert logits.dtype == torch.float32  # the scheduler always samples in fp32
    assert torch.isfinite(logits).all()


def test_missing_cuda_is_a_named_error(demo_model: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError, match=r"model\.device"):
        load_torch_engine(ModelSettings(path=str(demo_model), device="cuda"), max_batch=2)


def test_long_prompt_prefilled_in_chunks_matches_full_forward(demo_model: Path) -> None:
    engine = load_torch_engine(ModelSettings(path=str(demo_model), dtype=EXACT), max_batch=4, prefill_chunk=8)
    chunks: list[tuple[int, int]] = []
    plan = engine.cache.plan_chunk
    engine.cache.plan_chunk = lambda length, start, count: (
        chunks.append((start, count)),
        plan(length, start, count),
    )[1]
    prompts = [engine.tokenizer(p)["input_ids"] for p in (PROMPTS[0], PROMPTS[3], PROMPTS[1])]
    assert len(prompts[1]) > 8
    assert len(prompts[2]) > 8
    # A short prompt first, then each long one alone (as the scheduler admits them), while others run.
    seqs = drive(engine, prompts, joins=[0, 2, 5], leaves=[12, 10, 10], steps=20)
    assert chunks
    assert chunks[0] == (0, 8)
    assert_matches_reference(engine, seqs, prompts)
