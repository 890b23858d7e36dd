"""The engine without HTTP: `generate_rows` (continuous batching, per-row choices) vs transformers' batched greedy
`model.generate` on the same weights (`export_hf`), in this process, one torch thread, c = 32 and 128 stories of
64 new tokens, best of 3 alternated runs. What `tinystories serve` can reach at best (docs/serving.md).

    pytest -s benchmarks/bench_engine.py
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tinystories.model import GPTNeo, config_from_preset  # noqa: E402
from tinystories.model.generate import Row, generate_rows, left_pad  # noqa: E402
from tinystories.model.hf import export_hf  # noqa: E402

TOKENS = 64


def compare(preset: str, root: Path) -> list[str]:
    torch.manual_seed(0)
    model = GPTNeo(config_from_preset(preset)).eval()
    eos = model.config.vocab_size - 1
    export_hf(model, root / preset)
    peer = transformers.GPTNeoForCausalLM.from_pretrained(root / preset).eval()
    lines = []
    for c in (32, 128):
        prompts = [[5 + i % 7, 7, 9, 11][: 1 + i % 4] for i in range(c)]
        ids, mask = left_pad(prompts, eos)

        def ours(prompts: list[list[int]] = prompts) -> None:
            generate_rows(model, [Row(p, TOKENS, 0.0) for p in prompts], eos)

        def theirs(ids: torch.Tensor = ids, mask: torch.Tensor = mask) -> None:
            with torch.no_grad():
                peer.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=TOKENS, do_sample=False, pad_token_id=eos
                )

        best = {"engine": float("inf"), "transformers": float("inf")}
        for _ in range(3):
            for name, run in (("engine", ours), ("transformers", theirs)):
                start = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - start)
        ratio = best["transformers"] / best["engine"]
        lines.append(
            f"{preset:<6}c={c:<4} engine {best['engine']:.3f} s, transformers {best['transformers']:.3f} s: "
            f"{ratio:.2f}x"
        )
    return lines


def test_engine_vs_transformers_generate(tmp_path):
    torch.set_num_threads(1)
    lines = [f"torch {torch.__version__}, transformers {transformers.__version__}, 1 thread, {TOKENS} greedy tokens"]
    for preset in ("demo", "1M"):
        lines += compare(preset, tmp_path)
    print("\n" + "\n".join(lines))


def test_seeded_stories_native_step_vs_plain_path():
    """How many seeded stories the native step changes: the same rows through the engine's native step and its
    plain ``GPTNeo.forward`` path (``fast=False``, what every step ran before the native one), 200 stories of 64
    tokens per preset, sampled (temperature 1, seed per row) and greedy. Their logits differ by fp32 rounding, so a
    story changes where a draw lands within rounding of a boundary (or two greedy candidates tie that closely);
    randomly initialised models, whose next-token distributions are nearly flat, are the unfavourable case."""
    from tinystories.model.engine import Engine, Job
    from tinystories.model.generate import choose_tokens

    torch.set_num_threads(1)
    lines = [f"torch {torch.__version__}: stories that differ between the native step and the plain path"]
    for preset in ("demo", "1M"):
        torch.manual_seed(0)
        model = GPTNeo(config_from_preset(preset)).eval()
        eos, vocab = model.config.vocab_size - 1, model.config.vocab_size
        g = torch.Generator().manual_seed(1)
        prompts = [torch.randint(0, vocab - 1, (1 + i % 9,), generator=g).tolist() for i in range(200)]
        for temperature in (1.0, 0.0):
            texts = []
            for fast in (True, False):
                rows = [
                    Row(p, TOKENS, temperature, generator=torch.Generator().manual_seed(i))
                    for i, p in enumerate(prompts)
                ]
                job = Job(rows)
                engine = Engine(model, eos, choose_tokens, max_batch=64, fast=fast)
                engine.submit(job)
                engine.run()
                texts.append(job.tokens)
            differ = sum(a != b for a, b in zip(*texts))
            kind = "sampled" if temperature else "greedy"
            lines.append(f"{preset:<6}{kind:<8} {differ} of {len(prompts)} stories ({TOKENS} tokens) differ")
    print("\n" + "\n".join(lines))
