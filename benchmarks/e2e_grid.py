"""The end-to-end table of ``gpu_report.py``: training-step tokens/s and peak memory of every paper preset.

Paths: ``auto`` (what ``tinystories-train`` picks on this GPU: :func:`tinystories.runtime.device.resolve_execution`),
``torch+compile`` (the plain model under ``torch.compile``), ``hf-eager`` and ``hf-compiled`` (Hugging Face's
``GPTNeoForCausalLM``), each in bf16 and fp16 (fp16 always with the GradScaler), at V=50257 for every preset and at
V=10000 for 33M (HF eager in fp16 only, as it is used), plus ``hybrid+compile`` at 33M: the sm_7x path (fp16,
Triton without ``tl.dot``) run on this GPU.
Our model runs the trainer's own step (:func:`tinystories.train.step.train_step`: AdamW, clipping, scaler); T=512,
random tokens. Cells run in order of importance until the time budget ends; the rest are "not measured".

Compilation dominates the time, so ``prewarm`` first compiles the compiled cells in parallel worker processes
(filling Inductor's on-disk caches); the timed pass then mostly hits those caches. Everything except the timing
(planning, the path ``auto`` takes for a given compute capability, the table) also runs without a GPU:
``gpu_report.py --dry-run``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

PRESETS = ("1M", "3M", "8M", "28M", "33M", "21M-1L", "33M-2L")
SEQ_LEN = 512
# Seconds a cell is assumed to need at most once its compilation is cached (an uncached compiled cell took ~12 s
# at 33M on the H200 of benchmarks/results/gpu_report-20261126-070839-*; an eager one ~6 s).
COST_S = {"auto": 12, "torch+compile": 12, "hf-eager": 8, "hf-compiled": 20, "hybrid+compile": 12}


@dataclass(frozen=True)
class Cell:
    preset: str
    vocab: int
    path: str
    dtype: str  # autocast dtype: "bf16" | "fp16" (with the GradScaler)

    @property
    def label(self) -> str:
        return f"{self.preset} V={self.vocab} {self.path} {self.dtype}"

    @property
    def compiled(self) -> bool:
        return self.path != "hf-eager"


def plan_cells(capability: tuple[int, int], presets: tuple[str, ...] = PRESETS) -> list[Cell]:
    """Every cell, most important first: for every preset the path auto takes and the strongest peers at the
    GPU's own dtype (bf16 from sm_80, else fp16; HF eager always fp16), the sm_7x path here (sm_80+ only: below,
    it is auto), auto and torch+compile at the other dtype (none below sm_80: no bf16), then V=10000 at 33M."""
    native = "bf16" if capability >= (8, 0) else "fp16"
    primary = [("auto", native), ("torch+compile", native), ("hf-eager", "fp16"), ("hf-compiled", native)]
    secondary = [(path, "fp16") for path in ("auto", "torch+compile")] if native == "bf16" else []
    big = "33M" if "33M" in presets else presets[0]
    cells = [Cell(p, 50257, path, dtype) for path, dtype in primary for p in presets]
    if native == "bf16":
        cells.append(Cell(big, 50257, "hybrid+compile", "fp16"))
    cells += [Cell(p, 50257, path, dtype) for path, dtype in secondary for p in presets]
    cells += [Cell(big, 10000, path, dtype) for path, dtype in primary + secondary]
    return cells


def execution_for(cell: Cell, device):
    """The trainer's resolution for our model's cells (``auto``: only the dtype is fixed)."""
    from tinystories.runtime.device import resolve_execution

    if cell.path == "auto":
        return resolve_execution(device, dtype=cell.dtype)
    if cell.path == "torch+compile":
        return resolve_execution(device, dtype=cell.dtype, impl="torch", compile=True)
    return resolve_execution(device, dtype=cell.dtype, impl="hybrid", compile=True)


def measure(cell: Cell, batch: int, steps: int) -> dict:
    """tokens/s and peak memory of ``steps`` training steps after 2 warm-up steps (which include compilation)."""
    import torch

    from tinystories.runtime.device import Dist, autocast_context
    from tinystories.train.config import load_config
    from tinystories.train.step import make_optimizer, train_step

    device = torch.device("cuda", 0)
    torch._dynamo.reset()  # a fresh compile per cell, never the recompile limit's silent fall-back to eager
    torch.manual_seed(0)
    c = load_config(None, {"preset": cell.preset, "batch_size": batch, "seq_len": SEQ_LEN, "max_steps": 10})
    config = c.gpt_neo_config(cell.vocab)
    gen = torch.Generator(device=device).manual_seed(0)
    idx = torch.randint(0, cell.vocab, (batch, SEQ_LEN + 1), generator=gen, device=device)
    x, y = idx[:, :-1].contiguous(), idx[:, 1:].contiguous()
    row: dict = {}
    if cell.path.startswith("hf-"):
        with device:  # built on the GPU: no slow CPU initialisation of a 50257 x C embedding
            model = _hf_model(config).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        forward = torch.compile(model) if cell.compiled else model
        scaler = torch.amp.GradScaler("cuda", enabled=cell.dtype == "fp16")
        autocast = autocast_context(device, cell.dtype)

        def step() -> None:
            with autocast:
                loss = forward(input_ids=x, labels=x).loss
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
    else:
        from tinystories.model import GPTNeo

        execution = execution_for(cell, device)
        row["execution"] = execution.as_dict()
        with device:
            model = GPTNeo(config).train()
        model.impl = execution.impl
        forward = torch.compile(model) if execution.compile else model
        optimizer = make_optimizer(model, c, device)
        scaler = torch.amp.GradScaler("cuda", enabled=execution.dtype == "fp16")
        autocast = autocast_context(device, execution.dtype)

        def step() -> None:
            train_step(forward, model, optimizer, scaler, lambda: (x, y), c=c, lr=1e-4, autocast=autocast, dist=Dist())

    t0 = time.perf_counter()
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    row["warmup_s"] = round(time.perf_counter() - t0, 1)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    row.update(
        tokens_per_s=batch * SEQ_LEN * steps / seconds,
        step_ms=1000 * seconds / steps,
        peak_gb=torch.cuda.max_memory_allocated() / 1e9,
    )
    return row


def _hf_model(config):
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    return GPTNeoForCausalLM(
        GPTNeoConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            max_position_embeddings=config.max_position_embeddings,
            window_size=config.window_size,
            attention_types=[[list(config.attention_layers), 1]],
            intermediate_size=config.intermediate_size,
            bos_token_id=config.vocab_size - 1,
            eos_token_id=config.vocab_size - 1,
        )
    )  # EOT is the last id (50256 in GPT-2's vocabulary)


def prewarm(cells: list[Cell], batch: int, workers: int, timeout_s: float, log) -> dict:
    """Compile the compiled cells in ``workers`` parallel processes (2 steps each) to fill Inductor's on-disk
    caches; failures only cost the cache hits (the timed pass compiles what is missing)."""
    compiled = [c for c in cells if c.compiled]
    if workers <= 0 or not compiled:
        return {"workers": 0}
    slices = [compiled[i::workers] for i in range(workers)]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--warm", json.dumps([asdict(c) for c in part]), str(batch), str(workers)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for part in slices
        if part
    ]
    failed = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=max(1.0, timeout_s - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            err = "timed out"
        if proc.returncode:
            failed += [line for line in (err or "").splitlines() if line.startswith("warm ")][-5:] or [
                f"rc {proc.returncode}: {(err or '').strip()[-300:]}"
            ]
    seconds = round(time.perf_counter() - t0, 1)
    log(
        f"  prewarmed {len(compiled)} compiled cells in {len(procs)} processes: {seconds} s"
        + (f"; failures: {failed}" if failed else "")
    )
    return {"workers": len(procs), "cells": len(compiled), "seconds": seconds, "failed": failed}


def run_cells(cells: list[Cell], batch: int, steps: int, budget, log) -> list[dict]:
    """Time the cells in order while the budget allows; every cell gets a row (measured, failed or not measured)."""
    import torch

    rows = []
    for cell in cells:
        row = {**asdict(cell), "batch": batch, "seq_len": SEQ_LEN}
        if not budget.allows(COST_S[cell.path]):
            row["not_measured"] = "out of time budget"
        else:
            try:
                row.update(measure(cell, batch, steps))
                log(
                    f"  {cell.label:<40} {row['tokens_per_s']:>12,.0f} tokens/s  peak {row['peak_gb']:6.2f} GB  "
                    f"(warm-up {row['warmup_s']} s)"
                )
            except Exception as exc:  # an OOM or a refusing peer is a result of this cell, not of the run
                row["error"] = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
                log(f"  {cell.label:<40} FAILED: {row['error']}")
            torch.cuda.empty_cache()
        rows.append(row)
    return rows


def format_table(rows: list[dict], auto_path: str) -> str:
    """A Markdown table: one line per (preset, vocab), one column per (path, dtype); tokens/s and peak memory."""
    columns = list(dict.fromkeys((r["path"], r["dtype"]) for r in rows))
    lines = [
        f"auto on this GPU: {auto_path}",
        "",
        "| preset | V | " + " | ".join(f"{p} {d}" for p, d in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for preset, vocab in dict.fromkeys((r["preset"], r["vocab"]) for r in rows):
        cells = []
        for path, dtype in columns:
            r = next(
                (r for r in rows if (r["preset"], r["vocab"], r["path"], r["dtype"]) == (preset, vocab, path, dtype)),
                None,
            )
            cells.append("" if r is None else _cell_text(r))
        lines.append(f"| {preset} | {vocab} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell_text(row: dict) -> str:
    if "tokens_per_s" in row:
        rate = row["tokens_per_s"]
        rate_text = f"{rate / 1e6:.2f}M" if rate >= 1e6 else f"{rate / 1e3:.0f}k"
        return f"{rate_text}, {row['peak_gb']:.1f} GB"
    if "error" in row:
        return "failed: " + row["error"].split(":")[0]
    return "not measured"


def _warm_main(cells_json: str, batch: str, workers: str) -> int:
    import torch

    # Leave room for the other workers and the kernel tests running beside them; an OOM costs one cell's cache.
    torch.cuda.set_per_process_memory_fraction(0.85 / int(workers))
    failed = 0
    for spec in json.loads(cells_json):
        try:
            measure(Cell(**spec), int(batch), steps=0)
        except Exception as exc:
            failed += 1
            print(f"warm {Cell(**spec).label}: {type(exc).__name__}: {str(exc).strip()[:200]}", file=sys.stderr)
        torch.cuda.empty_cache()
    return 1 if failed else 0


if __name__ == "__main__" and sys.argv[1:2] == ["--warm"]:
    sys.exit(_warm_main(*sys.argv[2:5]))
