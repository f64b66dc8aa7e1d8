"""Artifact formats and hot swap, measured in one run on this machine:

  load time      safetensors against the PyTorch pickle of the same ~100M-parameter model
  int8           against fp32 on the 100M model: size, decode-step latency, top-1 agreement
  onnx           against torch eager: decode-step latency at batch 1 and 16 (100M model)
  hot swap       from the swap request to the new version answering (demo model, over HTTP)

Run: .venv/bin/python bench/artifacts.py   (or -m bench.artifacts)
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/artifacts.py`, Python puts bench/ on the path rather than the repository.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import shutil
import statistics
import tempfile
import time

import httpx
import torch

from harness import REPO
from harness.models import ensure_demo_model, random_model
from harness.server import API_KEY, RuntimeProcess
from model_runtime.config import ModelSettings
from model_runtime.convert.convert import convert
from model_runtime.corpus import load_corpus
from model_runtime.engine.factory import load_engine
from model_runtime.engine.loading import detect_format
from model_runtime.engine.torch_engine import load_causal_lm

ADMIN_KEY = "bench-admin-key"


def median_seconds(action, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def load_seconds(folder: Path) -> float:
    """Load and answer one short forward pass: what it takes before serving (weights that are
    memory-mapped but never read would otherwise make the load look free)."""
    fmt = detect_format(folder)

    def load_and_run() -> None:
        model = load_causal_lm(fmt, torch.float32, torch.device("cpu"))
        with torch.inference_mode():
            model(input_ids=torch.tensor([[1, 2, 3, 4]]))

    return median_seconds(load_and_run)


def pickle_copy(source: Path, target: Path) -> Path:
    target.mkdir()
    model = load_causal_lm(detect_format(source), torch.float32, torch.device("cpu"))
    torch.save(model.state_dict(), target / "pytorch_model.bin")
    for path in source.iterdir():
        if path.name != "model.safetensors":
            shutil.copy(path, target / path.name)
    return target


def step_ms(folder: Path, batch: int, steps: int = 8) -> float:
    """Median time of one decode step with `batch` live sequences of 32 prompt tokens."""
    engine = load_engine(ModelSettings(path=str(folder), device="cpu"), max_batch=batch)
    ids = list(range(batch))
    engine.step([], [], ids, [[1 + i % 7] * 32 for i in ids])
    engine.step(ids, [2] * batch, [], [])
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        engine.step(ids, [2] * batch, [], [])
        times.append(time.perf_counter() - started)
    engine.close()
    return statistics.median(times) * 1e3


def swap_seconds(demo: Path, work: Path) -> tuple[float, float]:
    """(server-side seconds the swap took, client-side seconds until an answer came from the new version)."""
    target = work / "demo-v2"
    shutil.copytree(demo, target)
    keys = work / "admin-keys"
    keys.write_text(ADMIN_KEY + "\n")
    server = RuntimeProcess(
        demo, work, {"model": {"version": "v1"}, "server": {"admin_keys_file": str(keys)}}, "demo"
    )
    server.start()
    try:
        started = time.perf_counter()
        reply = httpx.post(
            f"{server.internal_url}/admin/models/demo/swap", json={"path": str(target), "version": "v2"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=300,
        )  # fmt: skip
        reply.raise_for_status()
        while True:
            answer = httpx.post(
                f"{server.base_url}/v1/completions", json={"model": "demo", "prompt": "Hi", "max_tokens": 1},
                headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60,
            )  # fmt: skip
            if answer.json()["system_fingerprint"].endswith("@v2"):
                return reply.json()["seconds"], time.perf_counter() - started
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.parse_args()  # no options: --help says what it measures
    torch.set_num_threads(torch.get_num_threads())
    demo = ensure_demo_model()
    big = random_model(REPO / ".cache" / "bench-llama-100m", demo, "llama", "100m")
    texts = load_corpus().held_out
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pickle = pickle_copy(big, work / "pickle")
        safetensors_s, pickle_s = load_seconds(big), load_seconds(pickle)
        int8 = convert(big, "int8", work / "int8", texts, min_agreement=0.0)["checks"]
        onnx_folder = work / "onnx"
        convert(big, "onnx", onnx_folder, texts, min_agreement=0.0)
        torch_ms = {b: step_ms(big, b) for b in (1, 16)}
        onnx_ms = {b: step_ms(onnx_folder, b) for b in (1, 16)}
        int8_ms = {b: step_ms(work / "int8", b) for b in (1, 16)}
        swap_server_s, swap_client_s = swap_seconds(demo, work)

    def ratio(name: str, ours: float, base: float, unit: str, digits: int = 1) -> tuple[str, str, str]:
        return name, f"{ours:.{digits}f} {unit} / {base:.{digits}f} {unit}", f"{ours / base:.2f}"

    mb = 1e6
    rows = [
        ratio("load + first forward: safetensors / pickle (100M)", safetensors_s, pickle_s, "s", 2),
        ratio("int8 / fp32 size (100M)", int8["size_bytes"] / mb, int8["source_size_bytes"] / mb, "MB", 0),
        ratio("int8 / fp32 decode step, batch 1", int8_ms[1], torch_ms[1], "ms"),
        ratio("int8 / fp32 decode step, batch 16", int8_ms[16], torch_ms[16], "ms"),
        ("int8 top-1 agreement with fp32", f"max logit diff {int8['max_abs_logit_diff']:.3f}",
         f"{int8['top1_agreement']:.3f}"),
        ratio("onnx / torch decode step, batch 1", onnx_ms[1], torch_ms[1], "ms"),
        ratio("onnx / torch decode step, batch 16", onnx_ms[16], torch_ms[16], "ms"),
        ("hot swap: request until the new version answers (demo)", f"swap {swap_server_s:.2f} s",
         f"{swap_client_s:.2f} s"),
    ]  # fmt: skip
    print("\n| measure | values | ratio |\n|---|---|---|")
    for name, values, ratio in rows:
        print(f"| {name} | {values} | {ratio} |")
    print(f"\nmachine: {torch.get_num_threads()} torch threads, torch {torch.__version__}")


if __name__ == "__main__":
    main()
