"""Token shards and TokenLoader vs the nanoGPT way (uint16 .bin + numpy memmap), on real TinyStories.

    python -m pytest benchmarks/bench_loader.py -s

* loader: (32, 512) int64 batches/s as tokens/s (padding included in `stories` mode), TokenLoader
  with 1 and 2 threads vs nanoGPT's `get_batch` (random windows from a memmap, per-row astype +
  torch.stack), on the same tokens (the real stories' tokens repeated to ~16M, so neither side fits
  in a small cache by accident);
* size: shard bytes vs the uint16 .bin.

`prepare`'s own speed against tiktoken + a uint16 .bin is benchmarks/bench_prepare.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tinystories.data import DatasetWriter, TokenLoader, prepare, read_index

BATCH, SEQ = 32, 512
REPEATS = 11  # real tokens x 11 ~ 16M tokens
STORY_FILES = (
    "tinystories_v1_train_head.txt.zst",
    "tinystoriesv2_gpt4_train_head.txt.zst",
    "tinystories_all_data_head.txt.zst",
    "tinystories_v1_train_continuation_lowercased.txt.zst",
)
RESULTS: dict[str, tuple[float, float, str]] = {}


def rate(step, work_per_step: float, seconds: float = 2.0) -> float:
    """Work per second of `step`, after one warm-up call, over at least `seconds`."""
    step()
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        step()
        done += 1
    return done * work_per_step / elapsed


def report(name: str, ours: float, peer: float, unit: str) -> None:
    RESULTS[name] = (ours, peer, unit)
    print(f"\n{name:<34} ours {ours:>14,.1f} {unit:<9} peer {peer:>14,.1f} {unit:<9} ratio {ours / peer:6.2f}x")


@pytest.fixture(scope="module")
def inputs(shared_data) -> list[Path]:
    return [shared_data / "tinystories" / name for name in STORY_FILES]


@pytest.fixture(scope="module")
def gpt2(gpt2_files):
    from tinystories.tokenizer import Tokenizer

    return Tokenizer.from_gpt2_files(*gpt2_files)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, inputs, gpt2) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare(inputs, out, gpt2, threads=2, progress=False)
    return out


@pytest.fixture(scope="module")
def big(tmp_path_factory, prepared) -> tuple[Path, Path]:
    """~16M real tokens as shards (default zstd level) and as a nanoGPT uint16 .bin."""
    src = prepared
    loader = TokenLoader(src, batch_size=1, seq_len=1)
    stream = loader.read_tokens(0, read_index(src)["splits"]["train"]["tokens"]).astype(np.uint16)
    index = read_index(src)
    out = tmp_path_factory.mktemp("big")
    writer = DatasetWriter(
        out,
        {
            "n_vocab": index["n_vocab"],
            "eot_token": index["eot_token"],
            "tokenizer_fingerprint": index["tokenizer"]["fingerprint"],
        },
    )
    eot_positions = np.flatnonzero(stream == index["eot_token"])
    stories = np.split(stream, eot_positions[:-1] + 1)
    for r in range(REPEATS):
        writer.add("train", stories, list(range(r * len(stories), (r + 1) * len(stories))))
    writer.finish()
    (out / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    bin_path = out / "train.bin"
    np.tile(stream, REPEATS).tofile(bin_path)
    return out, bin_path


def nanogpt_get_batch(data: np.memmap, rng: np.random.Generator):
    import torch

    ix = rng.integers(0, len(data) - SEQ - 1, size=BATCH)
    x = torch.stack([torch.from_numpy(data[i : i + SEQ].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + SEQ].astype(np.int64)) for i in ix])
    return x, y


@pytest.mark.parametrize(("mode", "threads"), [("packed", 1), ("packed", 2), ("stories", 2)])
def test_loader_tokens_per_second(benchmark, big, mode, threads):
    import torch

    data_dir, bin_path = big
    loader = TokenLoader(data_dir, batch_size=BATCH, seq_len=SEQ, mode=mode, threads=threads, prefetch=8)

    def ours():
        x, y = next(loader)
        return torch.from_numpy(x), torch.from_numpy(y)

    data = np.memmap(bin_path, dtype=np.uint16, mode="r")
    rng = np.random.default_rng(0)
    ours_rate = rate(ours, BATCH * SEQ)
    peer_rate = rate(lambda: nanogpt_get_batch(data, rng), BATCH * SEQ)
    report(f"loader {mode}, {threads} thread(s)", ours_rate / 1e6, peer_rate / 1e6, "M tok/s")
    benchmark.pedantic(ours, rounds=50, iterations=5)


def test_shard_size_vs_uint16_bin(benchmark, prepared):
    out = prepared
    index = read_index(out)
    tokens = sum(s["tokens"] for s in index["splits"].values())
    shard_bytes = sum(s["bytes"] for s in index["splits"].values())
    report("size MB (shards vs uint16 .bin)", shard_bytes / 1e6, tokens * 2 / 1e6, "MB")
    print(f"compression: uint16 .bin is {tokens * 2 / shard_bytes:.2f}x the shards ({tokens:,} tokens)")
    assert shard_bytes < tokens * 2
    benchmark.pedantic(lambda: None, rounds=1)
