"""Serving: `tinystories serve` (continuous batching) vs transformers' batched `model.generate` (KV cache) on the
same weights, on CPU, for the `demo` and `1M` presets (and `33M` with TINYSTORIES_BENCH_33M=1).

    pytest -s benchmarks/bench_serve.py
    TINYSTORIES_BENCH_TOKENS=100 TINYSTORIES_BENCH_REPS=5 pytest -s benchmarks/bench_serve.py

Each preset's randomly initialised model (speed does not depend on training) is saved as a checkpoint, which
`tinystories serve` loads in its own process, and exported with `tinystories export` (`export_hf`), which
transformers' `GPTNeoForCausalLM` loads here. For each concurrency c in (1, 8, 32, 128):

- transformers: the c prompts, left-padded, in one greedy `model.generate(max_new_tokens=TOKENS)` call (what a
  user would run instead of a server); TTFT is when its logits processor first runs, latency its whole call;
- serve: c greedy completion requests sent at once through the official `AsyncOpenAI` client (`--max-batch 128`),
  timed from their start to the last answer. One client serves every round, as a long-lived client (an
  application, lm-eval, vLLM's serving benchmark) does: made before the clock starts (as transformers' model is
  loaded before its call), its connections open from the warm-up on. TTFT is each request's first streamed chunk
  (a second, streamed pass), latency each non-streamed request's.

Both sides stop at <|endoftext|> and must produce the same texts (checked: "same text"). The two sides alternate,
repetition by repetition, so the load of other processes on the machine hits both; both run one torch thread
(TINYSTORIES_BENCH_THREADS). Figures are medians over the repetitions; the ratio is serve's tokens/s over
transformers'. Results go to benchmarks/results/bench_serve-<date>-<cpu>.txt.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import statistics
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
transformers = pytest.importorskip("transformers")

from _fixtures import save_random_checkpoint, shared_data_dir  # noqa: E402

from tinystories.model import load_checkpoint  # noqa: E402
from tinystories.model.generate import left_pad, prompt_ids  # noqa: E402
from tinystories.model.hf import export_hf  # noqa: E402
from tinystories.tokenizer import Tokenizer  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
TOKENS = int(os.environ.get("TINYSTORIES_BENCH_TOKENS", "64"))
REPS = int(os.environ.get("TINYSTORIES_BENCH_REPS", "3"))
# torch intra-op threads on both sides. One by default: on a shared 2-core machine, two OpenMP threads wait at
# every op for a core another process holds, and timings swung 10-40x between identical runs.
THREADS = int(os.environ.get("TINYSTORIES_BENCH_THREADS", "1"))
CONCURRENCIES = tuple(int(c) for c in os.environ.get("TINYSTORIES_BENCH_CONCURRENCY", "1,8,32,128").split(","))
PRESETS = ("demo", "1M", "33M") if os.environ.get("TINYSTORIES_BENCH_33M") else ("demo", "1M")
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


def start_server(checkpoint: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "tinystories.cli", "serve", str(checkpoint), "--port", str(port)]
    proc = subprocess.Popen(
        [*command, "--max-batch", str(max(CONCURRENCIES))],
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


class Run:
    """One side's figures for one concurrency: texts, new tokens, wall seconds, TTFTs and latencies (s)."""

    def __init__(self, texts: list[str], tokens: int, seconds: float, ttft: list[float], latency: list[float]):
        self.texts, self.tokens, self.seconds, self.ttft, self.latency = texts, tokens, seconds, ttft, latency


class Client:
    """One `AsyncOpenAI` client on one event loop for a whole comparison, as a long-lived client holds one (an
    application, lm-eval, vLLM's own serving benchmark): its connections stay open from one round to the next."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.openai = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        self.run(self.openai.close())
        self.loop.close()


def served(client: Client, model: str, concurrency: int) -> Run:
    async def one(i: int, stream: bool) -> tuple[str, int, float]:
        start = time.perf_counter()
        prompt = PROMPTS[i % len(PROMPTS)]
        if not stream:
            answer = await client.openai.completions.create(
                model=model, prompt=prompt, max_tokens=TOKENS, temperature=0
            )
            return answer.choices[0].text, answer.usage.completion_tokens, time.perf_counter() - start
        chunks = await client.openai.completions.create(
            model=model, prompt=prompt, max_tokens=TOKENS, temperature=0, stream=True
        )
        first = None
        async for chunk in chunks:
            if first is None and chunk.choices and chunk.choices[0].text:
                first = time.perf_counter() - start
        return "", 0, first if first is not None else time.perf_counter() - start

    async def main(stream: bool) -> tuple[float, list[tuple[str, int, float]]]:
        start = time.perf_counter()
        answers = await asyncio.gather(*(one(i, stream) for i in range(concurrency)))
        return time.perf_counter() - start, answers

    seconds, answers = client.run(main(False))
    ttft = [a[2] for a in client.run(main(True))[1]]
    return Run([a[0] for a in answers], sum(a[1] for a in answers), seconds, ttft, [a[2] for a in answers])


def hf_generate(model, tokenizer: Tokenizer, concurrency: int) -> Run:
    eot = tokenizer.eot_token
    ids, mask = left_pad([prompt_ids(tokenizer, PROMPTS[i % len(PROMPTS)]) for i in range(concurrency)], eot)
    first: list[float] = []

    def note_first_token(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not first:
            first.append(time.perf_counter())
        return scores

    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=TOKENS,
            do_sample=False,
            pad_token_id=eot,
            eos_token_id=eot,
            logits_processor=transformers.LogitsProcessorList([note_first_token]),
        )
    seconds = time.perf_counter() - start
    texts, tokens = [], 0
    for row in out[:, ids.shape[1] :].tolist():
        new = row[: row.index(eot)] if eot in row else row
        texts.append(tokenizer.decode(new))
        tokens += len(new)
    return Run(texts, tokens, seconds, [first[0] - start] * concurrency, [seconds] * concurrency)


def ms(values: list[float], q: float) -> str:
    ordered = sorted(values)
    return f"{1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]:.0f}"


def compare(preset: str, root: Path) -> list[str]:
    tokenizer = tokenizer_for(preset)
    if tokenizer is None:
        return [f"{preset:<6}skipped: GPT-2's BPE files are not in the shared data"]
    checkpoint = save_random_checkpoint(root / preset, 1, tokenizer, preset=preset, train_config={"preset": preset})
    export_hf(load_checkpoint(checkpoint, device="cpu")[0], root / f"{preset}-hf", tokenizer)
    peer = transformers.GPTNeoForCausalLM.from_pretrained(root / f"{preset}-hf").eval()
    proc, url = start_server(checkpoint)
    client = Client(url)
    runs: dict[tuple[str, int], list[Run]] = {}
    try:
        model_id = f"{preset}/{checkpoint.stem}"
        # load the model, warm up (and open the client's connections, as a long-lived client has them)
        served(client, model_id, max(CONCURRENCIES)), hf_generate(peer, tokenizer, 2)
        for _ in range(REPS):
            for c in CONCURRENCIES:  # alternated: the machine's other load hits both sides alike
                runs.setdefault(("hf", c), []).append(hf_generate(peer, tokenizer, c))
                runs.setdefault(("serve", c), []).append(served(client, model_id, c))
    finally:
        client.close()
        proc.terminate()
        proc.wait(30)
    lines = []
    for c in CONCURRENCIES:
        hf, ours = runs[("hf", c)], runs[("serve", c)]
        hf_rate = statistics.median(r.tokens / r.seconds for r in hf)
        our_rate = statistics.median(r.tokens / r.seconds for r in ours)
        ratios = sorted((o.tokens / o.seconds) / (h.tokens / h.seconds) for h, o in zip(hf, ours))
        same = all(h.texts == o.texts for h, o in zip(hf, ours))
        hf_ttft, our_ttft = [t for r in hf for t in r.ttft], [t for r in ours for t in r.ttft]
        hf_lat, our_lat = [t for r in hf for t in r.latency], [t for r in ours for t in r.latency]
        lines.append(
            f"{preset:<6}{c:>5}{hf_rate:>10.0f}{our_rate:>10.0f}{our_rate / hf_rate:>7.2f}x"
            f"{f'{ratios[0]:.2f}-{ratios[-1]:.2f}':>11}"
            f"{ms(hf_ttft, 0.5):>9}{ms(our_ttft, 0.5):>9}"
            f"{ms(hf_lat, 0.5):>9}{ms(our_lat, 0.5):>9}{ms(hf_lat, 0.99):>9}{ms(our_lat, 0.99):>9}{str(same):>6}"
        )
    return lines


def report() -> list[str]:
    torch.set_num_threads(THREADS)
    load = os.getloadavg()
    lines = [
        f"greedy, {TOKENS} new tokens per story, {REPS} alternated repetitions (medians), CPU: {cpu_name()} "
        f"({os.cpu_count()} cores), torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{THREADS} torch thread(s) each side, load average before {load[0]:.2f}",
        "tok/s: new tokens / wall time of all c stories; ratio: serve / transformers (median, and range over reps);",
        "TTFT and latency in ms, per story (transformers: its one batched call); same: identical texts every rep",
        f"{'preset':<6}{'c':>5}{'hf tok/s':>10}{'serve':>10}{'ratio':>8}{'range':>11}"
        f"{'hf TTFT':>9}{'serve':>9}{'hf p50':>9}{'serve':>9}{'hf p99':>9}{'serve':>9}{'same':>6}",
    ]
    with tempfile.TemporaryDirectory() as root:
        for preset in PRESETS:
            lines += compare(preset, Path(root))
    lines.append(f"load average after: {os.getloadavg()[0]:.2f}")
    return lines


def save(lines: list[str]) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", cpu_name().lower()).strip("-")[:40]
    path = RESULTS_DIR / f"bench_serve-{time.strftime('%Y%m%d')}-{slug}-{os.cpu_count()}cores.txt"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_served_throughput_vs_transformers_generate():
    lines = report()
    print("\n" + "\n".join(lines) + f"\nsaved to {save(lines)}")
