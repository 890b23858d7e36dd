"""Client throughput: `tinystories.llm` vs a plain `AsyncOpenAI` loop, against the same local server.

    pytest -s benchmarks/bench_synth.py          # or: python benchmarks/bench_synth.py
    TINYSTORIES_BENCH_N=5000 pytest -s benchmarks/bench_synth.py

The OpenAI-compatible test server (`tinystories.testing.openai_server`, FastAPI under uvicorn) runs in its
own process and answers at once; the table ends with its CPU per request: above 1000 / (those ms) requests/s
on its core, the server, not the client, is the limit. The peer is the loop everyone writes: one
`AsyncOpenAI` client, an `asyncio.Semaphore(concurrency)` and `await client.chat.completions.create(...)`.
For each we report completed requests/s (wall) and CPU-milliseconds per request of the client process
(plus its worker processes), both from the same run. On a shared machine wall time depends on other
load (and the server shares the cores); CPU per request is the client's own cost, and 1000 / (ms per
request) is the ceiling of requests/s per core.
"""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("openai")

from tinystories.llm import ChatClient, ChatRequest, ClientConfig, new_event_loop, run_chat  # noqa: E402
from tinystories.synth import build_prompt  # noqa: E402

N = int(os.environ.get("TINYSTORIES_BENCH_N", "2000"))
CONCURRENCIES = (64, 256)
BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": build_prompt("run", "dog", "happy", ["dialogue", "plot_twist"])}],
    "max_tokens": 600,
}


def start_server() -> tuple[subprocess.Popen, str]:
    port_file = Path(tempfile.mkdtemp()) / "port"
    proc = subprocess.Popen([sys.executable, "-m", "tinystories.testing", "--port-file", str(port_file)])
    deadline = time.time() + 30
    while not port_file.exists():
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("the benchmark server did not start")
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port_file.read_text()}/v1"


def process_cpu(pid: int) -> float:
    """CPU seconds used so far by a running process (Linux /proc), 0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(run, n: int = N) -> tuple[float, float]:
    """(requests/s, CPU ms per request) of `run()`, which makes `n` requests."""
    wall, cpu, child = time.perf_counter(), time.process_time(), children_cpu()
    run()
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu + children_cpu() - child
    return n / wall, cpu / n * 1e3


def plain_loop(url: str, concurrency: int, n: int = N) -> None:
    import openai

    async def main() -> None:
        client = openai.AsyncOpenAI(base_url=url, api_key="bench")
        semaphore = asyncio.Semaphore(concurrency)

        async def one() -> str:
            async with semaphore:
                response = await client.chat.completions.create(**BODY)
                return response.choices[0].message.content

        texts = await asyncio.gather(*(one() for _ in range(n)))
        assert all(texts)
        await client.close()

    asyncio.run(main())


def ours(url: str, concurrency: int, workers: int = 1, n: int = N) -> None:
    config = ClientConfig(base_url=url, api_key="bench", concurrency=concurrency, workers=workers)
    requests = (ChatRequest(str(i), BODY) for i in range(n))
    texts: list[str] = []
    stats = run_chat(requests, config, lambda r: texts.append(r.text))
    assert stats.succeeded == n and all(texts)


def warm_up(url: str) -> None:
    """First connections and imports happen outside the timed runs."""
    loop = new_event_loop()

    async def main() -> None:
        async with ChatClient(ClientConfig(base_url=url, api_key="bench", concurrency=8)) as client:
            await client.run([ChatRequest(str(i), BODY) for i in range(50)], lambda r: None)

    loop.run_until_complete(main())
    loop.close()
    plain_loop(url, 8, n=50)


def report() -> list[str]:
    server, url = start_server()
    try:
        warm_up(url)
        rows = []
        server_cpu = process_cpu(server.pid)
        for concurrency in CONCURRENCIES:
            plain_rps, plain_ms = measure(lambda c=concurrency: plain_loop(url, c))
            our_rps, our_ms = measure(lambda c=concurrency: ours(url, c))
            rows.append((f"{concurrency}", plain_rps, plain_ms, our_rps, our_ms))
        # Worker processes pay a one-off start-up (spawn + imports, ~1 s CPU each), reported on its own.
        workers = 2
        startup_cpu = measure(lambda: ours(url, CONCURRENCIES[-1], workers=workers, n=1), n=1)[1] / 1e3
        our_rps, our_ms = measure(lambda: ours(url, CONCURRENCIES[-1], workers=workers))
        steady_ms = our_ms - startup_cpu * 1e3 / N
        rows.append((f"{CONCURRENCIES[-1]}, {workers} worker processes*", plain_rps, plain_ms, our_rps, steady_ms))
        requests_served = N * (2 * len(CONCURRENCIES) + 1) + 1
        server_ms = (process_cpu(server.pid) - server_cpu) / requests_served * 1e3
    finally:
        server.kill()
        server.wait()
    lines = [
        f"{N} chat completions per run against the local test server (own process), {os.cpu_count()} CPUs",
        f"{'concurrency':<30}{'plain req/s':>12}{'ours req/s':>12}{'ratio':>8}"
        f"{'plain ms CPU/req':>18}{'ours ms CPU/req':>17}{'ratio':>8}",
    ]
    for name, plain_rps, plain_ms, our_rps, our_ms in rows:
        lines.append(
            f"{name:<30}{plain_rps:>12.0f}{our_rps:>12.0f}{our_rps / plain_rps:>7.2f}x"
            f"{plain_ms:>18.2f}{our_ms:>17.2f}{plain_ms / our_ms:>7.2f}x"
        )
    lines.append("CPU ratio = plain ms / ours ms per request: how many more requests one core sustains")
    lines.append(f"the server spent {server_ms:.2f} ms CPU per request (it is not the bottleneck below ~1/that)")
    lines.append(f"* CPU per request excludes the workers' one-off start-up ({startup_cpu:.2f} s CPU), measured apart")
    return lines


def test_client_throughput_vs_plain_asyncopenai_loop():
    print("\n" + "\n".join(report()))


if __name__ == "__main__":
    print("\n".join(report()))
