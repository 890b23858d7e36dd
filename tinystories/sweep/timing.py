"""``sweep estimate``: the projected wall time of every run and of the whole sweep, from the trainer's own step
timed on this device for each model shape, plus the measured start-up of a training subprocess."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
from rich.console import Console
from rich.table import Table

from tinystories.atomic import atomic_write_json
from tinystories.model.gpt_neo import GPTNeo
from tinystories.progress import format_duration
from tinystories.runtime.device import Dist, autocast_context, resolve_device, resolve_execution
from tinystories.sweep.grid import (
    RunPlan,
    SweepConfig,
    data_vocab_size,
    format_count,
    plan_runs,
    plan_warnings,
    prepare_data,
)
from tinystories.train.step import learning_rate, make_optimizer, train_step


@dataclass
class Probe:
    """Measured seconds of one model shape's pieces of work on this device."""

    shape: str
    step_s: float  # one optimiser step (grad_accum micro-batches, forward + backward + AdamW)
    eval_batch_s: float  # one validation forward
    sample_s: float  # the story the trainer samples at every evaluation
    checkpoint_s: float  # one checkpoint write
    tokens_per_step: int
    device: str  # where and how it was measured, e.g. "cuda:0 (NVIDIA H100 80GB HBM3) bf16 impl=fused compiled"

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.step_s


def probe(plan: RunPlan, *, steps: int = 5, warmup: int = 2) -> Probe:
    """Time the trainer's own step (its optimiser, execution path and autocast) on random tokens of the run's
    shape: the path ``auto`` resolves to here is the one the runs will take (compiled: warm-up includes it)."""
    c = plan.train_config
    device = resolve_device(c.device, 0)
    execution = resolve_execution(device, dtype=c.dtype, impl=c.impl, compile=c.compile)
    dtype = execution.dtype
    autocast = autocast_context(device, dtype)
    torch.manual_seed(0)
    model = GPTNeo(plan.model_config)
    model.impl = execution.impl
    model.to(device).train()
    # torch.compile of a module returns a module (OptimizedModule); its annotation says only Callable
    train_model = cast(torch.nn.Module, torch.compile(model)) if execution.compile else model
    optimizer = make_optimizer(model, c, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "fp16")
    vocab = plan.model_config.vocab_size
    x = torch.randint(0, vocab, (c.batch_size, plan.seq_len), device=device)
    y = torch.randint(0, vocab, (c.batch_size, plan.seq_len), device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn: Callable[[], object], n: int, n_warmup: int) -> float:
        for _ in range(n_warmup):
            fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        return (time.perf_counter() - t0) / n

    def step() -> None:
        train_step(
            train_model,
            model,
            optimizer,
            scaler,
            lambda: (x, y),
            c=c,
            lr=learning_rate(0, c),
            autocast=autocast,
            dist=Dist(),
        )

    @torch.no_grad()
    def eval_batch() -> None:
        with autocast:
            train_model(x, y)

    @torch.no_grad()
    def sample() -> None:
        model.eval()
        prompt = x[:1, :4]
        n = max(0, min(c.sample_max_new_tokens, plan.model_config.max_position_embeddings - prompt.shape[1]))
        model.generate(prompt, n, temperature=0.8, top_k=50)
        model.train()

    step_s = timed(step, steps, warmup)
    eval_s = timed(eval_batch, max(1, steps // 2), 1)
    sample_s = timed(sample, 1, 0) if c.sample_max_new_tokens else 0.0
    with tempfile.TemporaryDirectory() as tmp:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        ckpt_s = timed(lambda: torch.save(state, Path(tmp) / "probe.pt"), 1, 0)
    name = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
    return Probe(
        plan.run.shape,
        step_s,
        eval_s,
        sample_s,
        ckpt_s,
        plan.tokens_per_step,
        f"{name} {dtype} impl={execution.impl}{' compiled' if execution.compile else ''}",
    )


def startup_seconds() -> float:
    """Measured start-up of a training subprocess: the interpreter and the trainer's imports."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import tinystories.train, tinystories.data"], check=True)
    return time.perf_counter() - t0


def projected_seconds(plan: RunPlan, p: Probe, startup_s: float) -> float:
    """Wall time of one run as the trainer schedules it: steps, evaluations with their sample, checkpoints."""
    c, n = plan.train_config, plan.max_steps
    evals = n // c.eval_every + (n % c.eval_every != 0)  # every eval_every steps and at the last step
    checkpoints = n // c.ckpt_every + (n % c.ckpt_every != 0)
    return (
        startup_s
        + n * p.step_s
        + evals * (c.eval_batches * p.eval_batch_s + p.sample_s)
        + p.sample_s  # the story printed at the end
        + checkpoints * p.checkpoint_s
    )


def makespan(durations: Sequence[float], workers: int) -> float:
    """Total wall time when runs start in order on the first free worker (as :func:`run_sweep` does)."""
    free = [0.0] * max(1, workers)
    for d in durations:
        i = free.index(min(free))
        free[i] += d
    return max(free)


def estimate(
    sweep: SweepConfig, *, steps: int = 5, target_hours: float = 24.0, console: Console | None = None
) -> dict[str, Any]:
    """Probe every model shape of the grid, project every run and the whole sweep; writes ``estimate.json``."""

    console = console or Console()
    data_dir = prepare_data(sweep)
    plans = plan_runs(sweep, data_vocab_size(data_dir))
    for warning in plan_warnings(plans):
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    startup = startup_seconds()
    probes: dict[str, Probe] = {}
    for plan in plans:
        if plan.run.shape not in probes:
            console.print(f"probing {plan.run.shape} ({steps} steps)...")
            probes[plan.run.shape] = probe(plan, steps=steps)
    runs: list[dict[str, Any]] = []
    for plan in plans:
        p = probes[plan.run.shape]
        runs.append(
            {
                "name": plan.run.name,
                "steps": plan.max_steps,
                "tokens": plan.tokens,
                "tokens_per_s": p.tokens_per_s,
                "estimated_s": projected_seconds(plan, p, startup),
            }
        )
    workers = max(1, len(sweep.gpus))
    total = makespan([r["estimated_s"] for r in runs], workers)
    device = next(iter(probes.values())).device
    report = {
        "startup_s": startup,
        "probe_steps": steps,
        "workers": workers,
        "device": device,
        "probes": [asdict(p) for p in probes.values()],
        "runs": runs,
        "total_s": total,
    }
    table = Table(title=f"estimated wall time on {device} ({workers} at a time, {steps} probe steps per shape)")
    for col in ("run", "steps", "tokens", "tokens/s", "estimate"):
        table.add_column(col, justify="right")
    for r in runs:
        table.add_row(
            r["name"],
            f"{r['steps']:,}",
            format_count(r["tokens"]),
            f"{r['tokens_per_s']:,.0f}",
            format_duration(r["estimated_s"]),
        )
    console.print(table)
    verdict = "[green]within[/green]" if total <= target_hours * 3600 else "[red]over[/red]"
    console.print(
        f"total: {format_duration(total)} ({format_duration(sum(r['estimated_s'] for r in runs))} of "
        f"run time; start-up {startup:.1f}s per run measured) -- {verdict} the {target_hours:g} h target"
    )
    Path(sweep.out_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(sweep.out_dir) / "estimate.json", report, indent=2)
    return report
