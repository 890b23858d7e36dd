"""Where a served request's time goes: `tinystories serve` under c concurrent requests, with CPU time per request
on each side and, optionally, a py-spy profile of the server (docs/serving.md reads one).

    python benchmarks/profile_serve.py demo --concurrency 32 --max-tokens 64 --seconds 12
    python benchmarks/profile_serve.py demo --max-tokens 1 --py-spy /tmp/serve.txt   # the request path alone

The model is the preset's randomly initialised one (`1M` needs GPT-2's BPE files in the shared data); requests
are greedy completions through `AsyncOpenAI`, rounds of c at once, for `--seconds`. Prints tokens/s, the server's
and this client's CPU milliseconds per request, and, with `--py-spy FILE`, the share of samples per thread and
the top functions (inclusive) of a `py-spy record --format raw` profile of the server (py-spy must be on PATH).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import openai  # noqa: E402
from _fixtures import save_random_checkpoint, shared_data_dir  # noqa: E402

from tinystories.tokenizer import Tokenizer  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summarize(raw: Path, top: int = 25) -> list[str]:
    threads: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n, frames = int(count), stack.split(";")
        total += n
        threads[frames[0].split(": ", 1)[-1]] += n
        for frame in set(frames[1:]):
            name, _, where = frame.partition(" (")
            functions[f"{name} ({where.rsplit('/', 1)[-1]}"] += n
    lines = [f"{n / total:6.1%}  thread {name}" for name, n in threads.most_common()]
    return lines + [f"{n / total:6.1%}  {name}" for name, n in functions.most_common(top)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset", choices=["demo", "1M"])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--py-spy", type=Path, default=None, metavar="FILE")
    parser.add_argument("--batch-wait-ms", type=float, default=0.0, help="passed to tinystories serve")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp())
    if args.preset == "demo":
        from tinystories.story_templates import generate_stories

        tokenizer = Tokenizer.train(generate_stories(2000), vocab_size=2048)
    else:
        gpt2 = shared_data_dir() / "gpt2"
        tokenizer = Tokenizer.from_gpt2_files(gpt2 / "vocab.json", gpt2 / "merges.txt")
    checkpoint = save_random_checkpoint(root / args.preset, 1, tokenizer, preset=args.preset)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "tinystories.cli", "serve", str(checkpoint), "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--max-batch", str(max(32, args.concurrency)), "--batch-wait-ms", str(args.batch_wait_ms)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
    )
    spy = None
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit("tinystories serve did not start") from None
                time.sleep(0.2)
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0, timeout=600)
        model = f"{args.preset}/{checkpoint.stem}"

        async def round_of(c: int) -> None:
            await asyncio.gather(
                *(
                    client.completions.create(
                        model=model, prompt="Once upon a time", max_tokens=args.max_tokens, temperature=0
                    )
                    for _ in range(c)
                )
            )

        async def run() -> tuple[int, float]:
            await round_of(1)  # load the model
            rounds, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                await round_of(args.concurrency)
                rounds += 1
            return rounds, time.perf_counter() - start

        if args.py_spy:
            spy = subprocess.Popen(
                ["py-spy", "record", "-p", str(server.pid), "-d", str(int(args.seconds) + 2), "-r", "200"]
                + ["-f", "raw", "-o", str(args.py_spy), "-t"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        server_cpu, client_cpu = cpu_seconds(server.pid), time.process_time()
        rounds, seconds = asyncio.run(run())
        requests = rounds * args.concurrency
        server_ms = 1000 * (cpu_seconds(server.pid) - server_cpu) / requests
        client_ms = 1000 * (time.process_time() - client_cpu) / requests
        print(
            f"{args.preset}, c={args.concurrency}, {args.max_tokens} tokens: {requests * args.max_tokens / seconds:.0f}"
            f" tok/s; CPU per request: server {server_ms:.2f} ms, client {client_ms:.2f} ms"
        )
        if spy is not None:
            spy.wait(120)
            print("\n".join(summarize(args.py_spy)))
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
