"""Tokenizer speed: ours vs tiktoken vs Hugging Face `tokenizers` on the shared TinyStories text.

    pytest benchmarks/bench_tokenizer.py            # prints the tables (also: python benchmarks/bench_tokenizer.py)

Encoding: the GPT-2 tokenizer on the four shared train files (~6.2 MB, the held-out validation text is
not used), as one list of stories, on 1 thread and on all threads; MB/s of UTF-8 input, best of 3.
Every peer's output is checked to be identical to ours before timing. Training: 10,000-token byte-level
BPE on the same text, ours vs HF BpeTrainer (ByteLevel pre-tokenizer), wall time of one run each.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tinystories.corpus import EOT, read_text_chunks
from tinystories.tokenizer import GPT2_PATTERN, Tokenizer, bytes_to_unicode

TRAIN_FILES = [
    "tinystories_v1_train_head",
    "tinystoriesv2_gpt4_train_head",
    "tinystories_all_data_head",
    "tinystories_v1_train_continuation_lowercased",
]


def best_of(fn: Callable[[], object], repeat: int = 3) -> tuple[float, float]:
    """(wall seconds, CPU seconds of all threads), each the best of `repeat` runs after a warm-up.
    On a shared machine wall time depends on other load; CPU time shows the work itself."""
    fn()  # warm up (caches, thread pools)
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu)


def load_stories(shared_data: Path) -> list[str]:
    text = "".join(
        chunk for name in TRAIN_FILES for chunk in read_text_chunks(shared_data / "tinystories" / f"{name}.txt.zst")
    )
    return [s.strip() + "\n" for s in text.split(EOT) if s.strip()]


def tiktoken_gpt2(vocab_json: Path):
    import tiktoken

    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    encoder = json.loads(vocab_json.read_text(encoding="utf-8"))
    ranks = {bytes(byte_of[c] for c in t): i for t, i in encoder.items() if t != EOT}
    return tiktoken.Encoding(
        name="gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 50256}
    )


def encoding_table(shared_data: Path, vocab_json: Path, merges_txt: Path, tmp: Path) -> list[str]:
    import tokenizers

    ours = Tokenizer.from_gpt2_files(vocab_json, merges_txt)
    tik = tiktoken_gpt2(vocab_json)
    ours.save_hf(tmp / "tokenizer.json")
    hf = tokenizers.Tokenizer.from_file(str(tmp / "tokenizer.json"))
    stories = load_stories(shared_data)
    megabytes = sum(len(s.encode("utf-8")) for s in stories) / 1e6
    threads = os.cpu_count() or 1

    expected = ours.encode_batch(stories, num_threads=threads)
    assert [tik.encode_ordinary(s) for s in stories] == expected, "tiktoken disagrees"
    assert [e.ids for e in hf.encode_batch(stories)] == expected, "HF tokenizers disagrees"

    one = {
        "ours (C++ loop)": lambda: ours.encode_batch(stories, num_threads=1),
        "ours (Python loop)": lambda: [ours.encode(s) for s in stories],
        "tiktoken": lambda: [tik.encode_ordinary(s) for s in stories],
        "HF tokenizers": lambda: [hf.encode(s).ids for s in stories],
    }
    many = {
        "ours": lambda: ours.encode_batch(stories, num_threads=threads),
        "tiktoken": lambda: tik.encode_ordinary_batch(stories, num_threads=threads),
        "HF tokenizers": lambda: hf.encode_batch(stories),
    }
    lines = [
        f"GPT-2 encoding of {len(stories):,} stories, {megabytes:.2f} MB, {threads} cores, "
        f"load average {os.getloadavg()[0]:.1f} (best of 3):",
        f"  {'threads':>7}  {'tokenizer':<20} {'MB/s':>8} {'ours / it':>10}   {'MB/CPU-s':>8} {'ours / it':>10}",
    ]
    for n, table in [(1, one), (threads, many)]:
        timings = {name: best_of(fn) for name, fn in table.items()}
        ours_wall, ours_cpu = timings[next(iter(table))]
        for name, (wall, cpu) in timings.items():
            ratios = ("", "") if name.startswith("ours") else (f"{wall / ours_wall:9.1f}x", f"{cpu / ours_cpu:9.1f}x")
            lines.append(
                f"  {n:>7}  {name:<20} {megabytes / wall:8.1f} {ratios[0]:>10}   {megabytes / cpu:8.1f} {ratios[1]:>10}"
            )
    return lines


def training_table(shared_data: Path, vocab_size: int = 10_000) -> list[str]:
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    stories = load_stories(shared_data)
    megabytes = sum(len(s.encode("utf-8")) for s in stories) / 1e6
    texts = [EOT.join(stories)]

    start, start_cpu = time.perf_counter(), time.process_time()
    ours = Tokenizer.train(texts, vocab_size, [EOT])
    ours_s, ours_cpu = time.perf_counter() - start, time.process_time() - start_cpu

    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    start, start_cpu = time.perf_counter(), time.process_time()
    hf.train_from_iterator(stories, trainer)
    hf_s, hf_cpu = time.perf_counter() - start, time.process_time() - start_cpu

    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    hf_tokens = {bytes(byte_of[c] for c in t) for t in hf.get_vocab() if t != EOT}
    ours_tokens = set(ours.vocab[: ours.n_vocab - 1])
    return [
        f"BPE training to {vocab_size:,} tokens on {megabytes:.2f} MB ({os.cpu_count()} cores):",
        f"  ours          {ours_s:7.2f} s wall {ours_cpu:7.2f} s CPU",
        f"  HF BpeTrainer {hf_s:7.2f} s wall {hf_cpu:7.2f} s CPU   ours is {hf_s / ours_s:.1f}x faster (wall), "
        f"{hf_cpu / ours_cpu:.1f}x less CPU",
        f"  vocabularies share {len(ours_tokens & hf_tokens):,} of {len(ours_tokens):,} tokens (tie-breaks differ)",
    ]


def _report(request, lines: list[str]) -> None:
    """Print past pytest's output capture, so the table shows without -s."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + "\n".join(lines), flush=True)


def test_encoding_speed(request, shared_data, gpt2_files, tmp_path):
    pytest.importorskip("tiktoken")
    pytest.importorskip("tokenizers")
    _report(request, encoding_table(shared_data, *gpt2_files, tmp_path))


def test_training_speed(request, shared_data):
    pytest.importorskip("tokenizers")
    _report(request, training_table(shared_data))


if __name__ == "__main__":  # the same run through pytest, which brings the shared fixtures (conftest.py)
    raise SystemExit(pytest.main(["-q", __file__]))
