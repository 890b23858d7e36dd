"""Serving throughput: `tinystories serve` batching concurrent requests vs the same number of sequential
`generate` calls, on CPU, for the `demo` and `1M` presets.

    pytest -s benchmarks/bench_serve.py
    TINYSTORIES_BENCH_TOKENS=100 pytest -s benchmarks/bench_serve.py

For each concurrency c in (1, 8, 32), c completion requests (distinct seeds, `max_tokens` new tokens each)
go at once through the official `AsyncOpenAI` client to `tinystories serve` in its own process; the peer is
c calls of `generate_texts` for one prompt each, one after another in this process (no HTTP). Both sides
generate the same stories (same seeds: checked), so tokens/s compare the same work; ratios come from one
run. The peer runs first, before the server starts; both use `TINYSTORIES_BENCH_THREADS` torch threads
(default 1, see `THREADS`). Models are randomly initialised (speed does not depend on training; they rarely
emit <|endoftext|>, so every story runs to `max_tokens`). `demo` uses a 2,048-token BPE, `1M` GPT-2's 50,257
tokens (from the shared data; skipped without it). Results go to benchmarks/results/bench_serve-<date>-<cpu>.txt.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from _fixtures import save_random_checkpoint, shared_data_dir  # noqa: E402

from tinystories.model import GPTNeo, load_checkpoint  # noqa: E402
from tinystories.model.generate import generate_texts  # noqa: E402
from tinystories.tokenizer import Tokenizer  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
TOKENS = int(os.environ.get("TINYSTORIES_BENCH_TOKENS", "64"))
# torch intra-op threads on both sides. One by default: on a shared 2-core machine, two OpenMP threads wait at
# every op for a core another process holds, and timings swung 10-40x between identical runs.
THREADS = int(os.environ.get("TINYSTORIES_BENCH_THREADS", "1"))
CONCURRENCIES = (1, 8, 32)
PROMPTS = ("Once upon a time", "Tom and his dog", "One day, a little girl named Lily", "The sun was")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def tokenizer_for(preset: str) -> Tokenizer | None:
    if preset == "demo":
        from tinystories.story_templates import generate_stories

        return Tokenizer.train(generate_stories(2000), vocab_size=2048)
    gpt2 = shared_data_dir() / "gpt2"
    if not (gpt2 / "vocab.json").is_file():
        return None
    return Tokenizer.from_gpt2_files(gpt2 / "vocab.json", gpt2 / "merges.txt")


def make_checkpoint(preset: str, tokenizer: Tokenizer, root: Path) -> tuple[Path, GPTNeo]:
    """The preset's randomly initialised model as a checkpoint, and that model as the server will load it."""
    path = save_random_checkpoint(root / preset, 1, tokenizer, preset=preset, train_config={"preset": preset})
    return path, load_checkpoint(path, device="cpu")[0]


def start_server(checkpoint: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinystories.cli", "serve", str(checkpoint), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": str(THREADS)},
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("tinystories serve did not start") from None
            time.sleep(0.2)


def served(url: str, model: str, concurrency: int) -> tuple[list[str], int, float]:
    """(stories, new tokens in all, seconds) of ``concurrency`` requests sent at once."""

    async def main() -> list:
        client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
        answers = await asyncio.gather(
            *(
                client.completions.create(
                    model=model, prompt=PROMPTS[i % len(PROMPTS)], max_tokens=TOKENS, seed=i, temperature=1.0
                )
                for i in range(concurrency)
            )
        )
        return answers

    start = time.perf_counter()
    answers = asyncio.run(main())
    seconds = time.perf_counter() - start
    return [a.choices[0].text for a in answers], sum(a.usage.completion_tokens for a in answers), seconds


def sequential(model: GPTNeo, tokenizer: Tokenizer) -> dict[int, tuple[list[str], float]]:
    """concurrency -> (stories, seconds) of that many generate calls one after another, measured before the
    server starts so that the two never share the CPU."""
    results = {}
    for concurrency in (2, *CONCURRENCIES):  # the first pass warms up
        start = time.perf_counter()
        texts = [
            generate_texts(
                model, tokenizer, [PROMPTS[i % len(PROMPTS)]], max_new_tokens=TOKENS, seed=i, include_prompt=False
            )[0]
            for i in range(concurrency)
        ]
        results[concurrency] = texts, time.perf_counter() - start
    return results


def report() -> list[str]:
    torch.set_num_threads(THREADS)
    lines = [
        f"tokens/s, {TOKENS} new tokens per story, CPU: {cpu_name()} ({os.cpu_count()} cores), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        f"{'preset':<8}{'concurrency':>12}{'sequential tok/s':>18}{'served tok/s':>14}{'ratio':>8}{'same text':>11}",
    ]
    with tempfile.TemporaryDirectory() as root:
        for preset in ("demo", "1M"):
            tokenizer = tokenizer_for(preset)
            if tokenizer is None:
                lines.append(f"{preset:<8}skipped: GPT-2's BPE files are not in the shared data")
                continue
            checkpoint, model = make_checkpoint(preset, tokenizer, Path(root))
            peers = sequential(model, tokenizer)
            proc, url = start_server(checkpoint)
            try:
                model_id = f"{preset}/{checkpoint.stem}"
                served(url, model_id, 2)  # load the model, warm up
                for concurrency in CONCURRENCIES:
                    ours, tokens, ours_s = served(url, model_id, concurrency)
                    peer, peer_s = peers[concurrency]
                    lines.append(
                        f"{preset:<8}{concurrency:>12}{tokens / peer_s:>18.0f}{tokens / ours_s:>14.0f}"
                        f"{peer_s / ours_s:>7.2f}x{str(ours == peer):>11}"
                    )
            finally:
                proc.terminate()
                proc.wait(30)
    lines.append("ratio = sequential time / served time for the same stories (goal: >= 4x at concurrency 32)")
    return lines


def save(lines: list[str]) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", cpu_name().lower()).strip("-")[:40]
    path = RESULTS_DIR / f"bench_serve-{time.strftime('%Y%m%d')}-{slug}-{os.cpu_count()}cores.txt"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_served_throughput_vs_sequential_generate():
    lines = report()
    print("\n" + "\n".join(lines) + f"\nsaved to {save(lines)}")
