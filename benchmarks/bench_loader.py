"""Token shards and TokenLoader vs the nanoGPT way (uint16 .bin + numpy memmap), on real TinyStories.

    python -m pytest benchmarks/bench_loader.py -s

* loader: (32, 512) int64 batches/s as tokens/s, TokenLoader with 1 and 2 threads vs nanoGPT's
  `get_batch` (random windows from a memmap, per-row astype + torch.stack), on the same tokens
  (the real stories' tokens repeated to ~16M, so neither side fits in a small cache by accident);
* prepare: corpus MB/s (decompressed text) for `prepare` vs tiktoken `encode_ordinary_batch` +
  writing a uint16 .bin (nanoGPT's prepare.py), same files, same thread count;
* size: shard bytes vs the uint16 .bin.
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
def prepared(tmp_path_factory, inputs, gpt2) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("prepared")
    start = time.perf_counter()
    prepare(inputs, out, gpt2, threads=2, progress=False)
    return out, time.perf_counter() - start


@pytest.fixture(scope="module")
def big(tmp_path_factory, prepared) -> tuple[Path, Path]:
    """~16M real tokens as shards (default zstd level) and as a nanoGPT uint16 .bin."""
    src, _ = prepared
    loader = TokenLoader(src, batch_size=1, seq_len=1)
    stream = loader.read_tokens(0, read_index(src)["splits"]["train"]["tokens"]).astype(np.uint16)
    index = read_index(src)
    out = tmp_path_factory.mktemp("big")
    writer = DatasetWriter(out, {"n_vocab": index["n_vocab"], "eot_token": index["eot_token"],
                                 "tokenizer_fingerprint": index["tokenizer"]["fingerprint"]})  # fmt: skip
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


@pytest.mark.parametrize("threads", [1, 2])
def test_loader_tokens_per_second(benchmark, big, threads):
    import torch

    data_dir, bin_path = big
    loader = TokenLoader(data_dir, batch_size=BATCH, seq_len=SEQ, threads=threads, prefetch=8)

    def ours():
        x, y = next(loader)
        return torch.from_numpy(x), torch.from_numpy(y)

    data = np.memmap(bin_path, dtype=np.uint16, mode="r")
    rng = np.random.default_rng(0)
    ours_rate = rate(ours, BATCH * SEQ)
    peer_rate = rate(lambda: nanogpt_get_batch(data, rng), BATCH * SEQ)
    report(f"loader tokens/s, {threads} thread(s)", ours_rate / 1e6, peer_rate / 1e6, "M tok/s")
    benchmark.pedantic(ours, rounds=50, iterations=5)


def nanogpt_prepare(inputs: list[Path], gpt2_files: tuple[Path, Path], out: Path) -> float:
    """Seconds for nanoGPT-style prep: tiktoken GPT-2 (built offline from the same files), EOT after
    each story, one uint16 .bin. Includes decompressing and splitting the inputs, like ours."""
    import tiktoken
    import zstandard
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    ranks = data_gym_to_mergeable_bpe_ranks(str(gpt2_files[1]), str(gpt2_files[0]))
    pat = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    enc = tiktoken.Encoding("gpt2", pat_str=pat, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})
    start = time.perf_counter()
    with open(out, "wb") as f:
        for path in inputs:
            text = zstandard.ZstdDecompressor().stream_reader(path.read_bytes(), read_across_frames=True).read().decode()
            stories = [s.strip() for s in text.split("<|endoftext|>") if s.strip()]
            ids = enc.encode_ordinary_batch(stories, num_threads=2)
            np.concatenate([np.array(t + [enc.eot_token], dtype=np.uint16) for t in ids]).tofile(f)
    return time.perf_counter() - start


def test_prepare_megabytes_per_second(benchmark, prepared, inputs, gpt2_files, tmp_path):
    import zstandard

    text_mb = sum(len(zstandard.ZstdDecompressor().stream_reader(p.read_bytes(), read_across_frames=True).read())
                  for p in inputs) / 1e6  # fmt: skip
    _, ours_seconds = prepared
    peer_seconds = nanogpt_prepare(inputs, gpt2_files, tmp_path / "peer.bin")
    report("prepare MB/s of text (2 threads)", text_mb / ours_seconds, text_mb / peer_seconds, "MB/s")
    print(f"(ours also compresses with zstd -{read_index(prepared[0])['zstd_level']} and splits train/val; "
          f"{text_mb:.1f} MB of text)")  # fmt: skip
    benchmark.pedantic(lambda: None, rounds=1)


def test_shard_size_vs_uint16_bin(benchmark, prepared):
    out, _ = prepared
    index = read_index(out)
    tokens = sum(s["tokens"] for s in index["splits"].values())
    shard_bytes = sum(s["bytes"] for s in index["splits"].values())
    report("size MB (shards vs uint16 .bin)", shard_bytes / 1e6, tokens * 2 / 1e6, "MB")
    print(f"compression: uint16 .bin is {tokens * 2 / shard_bytes:.2f}x the shards ({tokens:,} tokens)")
    assert shard_bytes < tokens * 2
    benchmark.pedantic(lambda: None, rounds=1)
