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
