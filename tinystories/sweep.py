"""Size x compute sweeps and the compute-optimal fit.

Eldan & Li (2023) trained a grid of model shapes (hidden {64..1024} x layers {1..12}) for several token
budgets and found that, even at this scale, the compute-optimal model size follows a power law in compute
(as Hoffmann et al. 2022 found for large models). This module runs such a grid and fits that law:

    tinystories sweep estimate --out runs/sweep --hidden 64,128,256 --layers 1,2,4 --tokens 50M,200M
    tinystories sweep run      --out runs/sweep --hidden 64,128,256 --layers 1,2,4 --tokens 50M,200M --gpus 0,1,2,3
    tinystories sweep analyze  runs/sweep          # table, frontier, N_opt ~ C^a with its CI, scaling.png
    tinystories sweep grade    runs/sweep --judge-model gpt-4o   # the evaluation module over every run

Each grid point is an ordinary ``tinystories-train`` subprocess with its own run directory
(``<out>/h<hidden>-l<layers>-t<tokens>``), so any run can be inspected, resumed or re-run alone. Runs go one
after another on one device, or one run per GPU (``CUDA_VISIBLE_DEVICES``) over several. ``sweep run``
again on the same directory skips finished runs and resumes interrupted ones (``--resume`` from their
newest checkpoint). A token budget becomes ``max_steps = ceil(tokens / tokens_per_step)``.

Compute: training FLOPs ``C = flops_per_token * tokens`` with :func:`tinystories.model.flops_per_token`
(PaLM, Chowdhery et al. 2022, appendix B): ``6 N`` for the matmul weights ``N`` (embedding/output head
included, as it is a matmul) plus the attention term ``12 * C_hidden * K`` per layer for the QK^T and AV products, with K the mean
number of keys a query attends to under the causal mask (``(T+1)/2`` for global layers; for local layers each
query sees ``min(i+1, window)`` keys). The size in the fit is the non-embedding parameter count (Kaplan et
al. 2020), since with a 50k vocabulary the embedding dominates the small models; ``--params total`` uses
every parameter.

The compute-optimal analysis (Hoffmann et al. approach 1): each model shape gives a loss-vs-compute
curve -- the final validation loss of its runs (one per token budget), or also every intermediate
validation point with ``--points trajectory`` -- reduced to its lower envelope. At log-spaced compute
budgets covered by at least two shapes, the curves are interpolated (linear in log C) and the shape with
the lowest loss is the optimal size N_opt(C). ``log N_opt = a log C + b`` is fitted by least squares; the
confidence interval of ``a`` is a bootstrap percentile interval over the (C, N_opt) pairs, reported with
the regression's standard error.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tinystories.atomic import atomic_save_png, atomic_write_json, atomic_write_text

STATUS_FILE = "sweep-status.json"
MANIFEST = "sweep.json"
# Keys the sweep itself sets for every run; passing them with --set would silently break the grid.
RESERVED_KEYS = ("hidden_size", "num_layers", "max_steps", "out_dir", "resume", "preset", "data")


# ============================================================================================
# The grid
# ============================================================================================
@dataclass
class SweepConfig:
    out_dir: str
    hidden: list[int]
    layers: list[int]
    tokens: list[int]
    preset: str = "demo"  # the trainer preset every run starts from (heads, vocab, context, optimiser)
    data: str | None = None  # as the trainer's --data; prepared once for the whole sweep
    train_config: str | None = None  # a TOML file given to every run
    overrides: dict[str, str] = field(default_factory=dict)  # --key=value given to every run
    gpus: list[int] = field(default_factory=list)  # empty: one run at a time, the environment's device

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "tokens"):
            values = getattr(self, name)
            if not values or any(not isinstance(v, int) or v <= 0 for v in values):
                raise ValueError(f"sweep: {name} must be a non-empty list of positive integers, got {values!r}")
            if len(set(values)) != len(values):
                raise ValueError(f"sweep: {name} lists a value twice: {values!r}")
        bad = sorted(set(self.overrides) & set(RESERVED_KEYS))
        if bad:
            raise ValueError(f"sweep: --set {bad[0]}=... is set by the sweep itself (reserved: "
                             f"{', '.join(RESERVED_KEYS)}); use --hidden/--layers/--tokens/--preset/--data")

    def runs(self) -> list[RunSpec]:
        return [RunSpec(h, n, t) for h in self.hidden for n in self.layers for t in self.tokens]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, out_dir: str | Path) -> SweepConfig:
        path = Path(out_dir) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{out_dir} is not a sweep directory (no {MANIFEST}); start one with "
                                    f"`tinystories sweep run --out {out_dir} ...`")
        return cls(**json.loads(path.read_text()))


@dataclass(frozen=True)
class RunSpec:
    hidden: int
    layers: int
    tokens: int

    @property
    def name(self) -> str:  # exact, so two budgets never share a run directory
        return f"h{self.hidden}-l{self.layers}-t{exact_count(self.tokens)}"

    @property
    def shape(self) -> str:
        return f"h{self.hidden}-l{self.layers}"


def parse_count(text: str) -> int:
    """``"50M"`` -> 50_000_000; also ``2.5k``, ``1B``, ``1e6`` and plain integers."""
    text = text.strip()
    scale = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}.get(text[-1:].lower(), 1)
    number = text[:-1] if scale > 1 else text
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"not a count: {text!r} (examples: 50M, 2.5k, 1e6)") from None
    if value <= 0 or not value.is_integer():
        raise ValueError(f"not a positive whole count: {text!r}")
    return int(value)


def exact_count(n: int) -> str:
    """``50_000_000`` -> ``"50M"``, ``2_500_000`` -> ``"2500k"``, ``12288`` -> ``"12288"``: short and lossless."""
    for suffix, scale in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)


def format_count(n: float) -> str:
    for suffix, scale in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.3g}"


# ============================================================================================
# The trainer, seen from the sweep: config resolution, command line, run directory files
# ============================================================================================
def train_config_for(sweep: SweepConfig, run: RunSpec, max_steps: int = 1):
    """The trainer's validated :class:`~tinystories.train.TrainConfig` of one run (raises ConfigError)."""
    from tinystories.train import load_config

    overrides = {**sweep.overrides, "preset": sweep.preset, "hidden_size": run.hidden, "num_layers": run.layers,
                 "max_steps": max_steps, "out_dir": str(run_dir(sweep, run))}
    if sweep.data is not None:
        overrides["data"] = sweep.data
    return load_config(sweep.train_config, overrides)


@dataclass
class RunPlan:
    """What a run will do, resolved through the trainer's own config before anything runs."""

    run: RunSpec
    max_steps: int
    tokens_per_step: int
    seq_len: int
    model_config: Any  # tinystories.model.GPTNeoConfig
    train_config: Any  # tinystories.train.TrainConfig

    @property
    def tokens(self) -> int:
        return self.max_steps * self.tokens_per_step


def plan_runs(sweep: SweepConfig, vocab_size: int) -> list[RunPlan]:
    plans = []
    for run in sweep.runs():
        c = train_config_for(sweep, run)
        mc = c.model_config(vocab_size)
        seq_len = c.seq_len or mc.max_position_embeddings
        tokens_per_step = c.batch_size * seq_len * c.grad_accum
        max_steps = math.ceil(run.tokens / tokens_per_step)
        plans.append(RunPlan(run, max_steps, tokens_per_step, seq_len, mc, train_config_for(sweep, run, max_steps)))
    return plans


def run_dir(sweep: SweepConfig, run: RunSpec) -> Path:
    return Path(sweep.out_dir) / run.name


def train_command(sweep: SweepConfig, plan: RunPlan, data_dir: Path) -> list[str]:
    from tinystories.checkpoint import list_checkpoints

    run = plan.run
    cmd = [sys.executable, "-m", "tinystories.train"]
    if sweep.train_config:
        cmd.append(sweep.train_config)
    cmd += [f"--preset={sweep.preset}", f"--hidden_size={run.hidden}", f"--num_layers={run.layers}",
            f"--max_steps={plan.max_steps}", f"--out_dir={run_dir(sweep, run)}", f"--data={data_dir}",
            "--display=plain"]
    cmd += [f"--{k}={v}" for k, v in sweep.overrides.items()]
    if list_checkpoints(run_dir(sweep, run)):
        cmd.append("--resume")
    return cmd


def prepare_data(sweep: SweepConfig) -> Path:
    """Token shards shared by every run, prepared once (the trainer would otherwise prepare per run)."""
    from tinystories.train import Dist, resolve_data

    c = train_config_for(sweep, sweep.runs()[0])
    return resolve_data(c, Path(sweep.out_dir) / "shared", Dist()).resolve()


def data_vocab_size(data_dir: Path) -> int:
    from tinystories.data import load_dataset_tokenizer

    return load_dataset_tokenizer(data_dir).n_vocab


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of a run's metrics.jsonl; a torn last line (a killed run) is ignored."""
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def read_status(directory: Path) -> dict[str, Any]:
    path = directory / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else {"status": "pending", "wall_s": 0.0, "attempts": 0}


# ============================================================================================
# Running: sequential, or one run per GPU
# ============================================================================================
def run_sweep(sweep: SweepConfig, *, console=None, poll_s: float = 0.5) -> list[dict[str, Any]]:
    """Run every unfinished grid point; returns the collected results (see :func:`collect_results`)."""
    from rich.console import Console

    console = console or Console()
    out = Path(sweep.out_dir)
    manifest = out / MANIFEST
    if manifest.is_file():
        previous = json.loads(manifest.read_text())
        changed = sorted(k for k in ("hidden", "layers", "tokens", "preset", "data", "train_config", "overrides")
                         if previous.get(k) != sweep.to_dict()[k])
        if changed:
            raise ValueError(f"{out} holds a sweep with different {', '.join(changed)}; resume it with the same "
                             f"grid or choose another --out")
    data_dir = prepare_data(sweep)
    plans = plan_runs(sweep, data_vocab_size(data_dir))
    atomic_write_json(manifest, sweep.to_dict(), indent=2)

    pending = [p for p in plans if read_status(run_dir(sweep, p.run))["status"] != "done"]
    slots: list[str | None] = [str(g) for g in sweep.gpus] or [None]
    console.print(f"sweep {out}: {len(plans)} runs, {len(plans) - len(pending)} already done, "
                  f"{len(slots)} at a time" + (f" on GPUs {','.join(map(str, sweep.gpus))}" if sweep.gpus else ""))
    active: dict[subprocess.Popen, tuple[RunPlan, str | None, float]] = {}  # process -> (run, GPU, start)
    try:
        while pending or active:
            while pending and len(active) < len(slots):
                plan = pending.pop(0)
                gpu = next(s for s in slots if s not in {g for _, g, _ in active.values()})
                active[_start(sweep, plan, data_dir, gpu, console)] = (plan, gpu, time.perf_counter())
            time.sleep(poll_s)
            for proc in [p for p in active if p.poll() is not None]:
                plan, _, t0 = active.pop(proc)
                _finish(sweep, plan, proc.returncode, time.perf_counter() - t0, console)
    except KeyboardInterrupt:  # stop the children we started; a later `sweep run` resumes them
        for proc in active:
            proc.send_signal(signal.SIGINT)
        for proc, (plan, _, t0) in active.items():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _finish(sweep, plan, "interrupted", time.perf_counter() - t0, console)
        raise
    return collect_results(sweep)


def _start(sweep: SweepConfig, plan: RunPlan, data_dir: Path, gpu: str | None, console) -> subprocess.Popen:
    directory = run_dir(sweep, plan.run)
    directory.mkdir(parents=True, exist_ok=True)
    status = read_status(directory)
    cmd = train_command(sweep, plan, data_dir)
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    status.update(status="running", attempts=status.get("attempts", 0) + 1, command=cmd, gpu=gpu,
                  max_steps=plan.max_steps)
    atomic_write_json(directory / STATUS_FILE, status, indent=2)
    log = open(directory / "train.log", "a", encoding="utf-8")
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    console.print(f"[bold]start[/bold] {plan.run.name}: {plan.max_steps} steps x {plan.tokens_per_step:,} tokens"
                  + (f" on GPU {gpu}" if gpu is not None else "") + ("  (resuming)" if "--resume" in cmd else ""))
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()  # the child holds its own descriptor
    return proc


def _finish(sweep: SweepConfig, plan: RunPlan, returncode: int | str, wall_s: float, console) -> None:
    directory = run_dir(sweep, plan.run)
    status = read_status(directory)
    ok = returncode == 0
    status.update(status="done" if ok else ("interrupted" if returncode == "interrupted" else "failed"),
                  returncode=returncode, wall_s=status.get("wall_s", 0.0) + wall_s)
    atomic_write_json(directory / STATUS_FILE, status, indent=2)
    style = "green" if ok else "red"
    tail = "" if ok else f" (see {directory / 'train.log'})"
    console.print(f"[{style}]{status['status']}[/{style}] {plan.run.name} in {wall_s:.1f}s{tail}")


# ============================================================================================
# Results
# ============================================================================================
RESULT_COLUMNS = ("name", "hidden", "layers", "status", "tokens", "steps", "params", "non_embedding_params",
                  "flops_per_token", "compute", "final_val_loss", "best_val_loss", "wall_s")


def collect_results(sweep: SweepConfig) -> list[dict[str, Any]]:
    """One row per grid point (RESULT_COLUMNS, plus ``curve``: [(tokens, val_loss), ...])."""
    from tinystories.model import GPTNeo, GPTNeoConfig, flops_per_token

    rows = []
    for run in sweep.runs():
        directory = run_dir(sweep, run)
        status = read_status(directory)
        row: dict[str, Any] = {c: None for c in RESULT_COLUMNS}
        row.update(name=run.name, hidden=run.hidden, layers=run.layers, status=status["status"],
                   wall_s=status.get("wall_s"), curve=[])
        config_path = directory / "config.json"
        if config_path.is_file():
            saved = json.loads(config_path.read_text())
            mc = GPTNeoConfig.from_dict(saved["model"])
            train = saved["train"]
            seq_len = train.get("seq_len") or mc.max_position_embeddings
            tokens_per_step = train["batch_size"] * seq_len * train["grad_accum"] * saved.get("world_size", 1)
            model = _meta_model(GPTNeo, mc)
            fpt = flops_per_token(mc, seq_len)
            records = read_metrics(directory / "metrics.jsonl")
            # a resumed run may evaluate a step again: the last record of a step wins
            val = {r["step"]: float(r["val_loss"]) for r in records if "val_loss" in r}
            curve = [(step * tokens_per_step, loss) for step, loss in sorted(val.items())]
            steps = max((r["step"] for r in records), default=0)
            row.update(params=model.num_parameters(), non_embedding_params=model.num_parameters(non_embedding=True),
                       flops_per_token=fpt, tokens=steps * tokens_per_step, steps=steps,
                       compute=fpt * steps * tokens_per_step, curve=curve)
            if curve:
                row.update(final_val_loss=curve[-1][1], best_val_loss=min(loss for _, loss in curve))
        rows.append(row)
    return rows


def _meta_model(cls, config):
    """The model built on the meta device: parameter counts without allocating weights."""
    import torch

    with torch.device("meta"):
        return cls(config)


def write_results(rows: Sequence[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    csv_path, json_path = out_dir / "results.csv", out_dir / "results.json"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(csv_path, buf.getvalue())
    atomic_write_json(json_path, list(rows), indent=2)
    return csv_path, json_path


def results_table(rows: Sequence[dict[str, Any]], title: str):
    from rich.table import Table

    table = Table(title=title)
    for col in ("run", "status", "params (non-emb)", "tokens", "compute", "val loss", "wall"):
        table.add_column(col, justify="left" if col in ("run", "status") else "right")
    fmt = lambda v, f: "-" if v is None else f(v)  # noqa: E731
    for r in rows:
        table.add_row(r["name"], r["status"], fmt(r["non_embedding_params"], format_count), fmt(r["tokens"], format_count),
                      fmt(r["compute"], lambda c: f"{c:.2e}"), fmt(r["final_val_loss"], lambda v: f"{v:.4f}"),
                      fmt(r["wall_s"], lambda s: f"{s:.0f}s"))
    return table


# ============================================================================================
# Compute-optimal analysis (plain numbers)
# ============================================================================================
@dataclass(frozen=True)
class ScalingPoint:
    shape: str  # one model shape; its points form one loss-vs-compute curve
    params: float
    compute: float
    loss: float


@dataclass(frozen=True)
class OptimalSize:
    compute: float
    params: float
    loss: float
    shape: str
    candidates: int  # shapes whose curve covers this compute
    interior: bool  # neither the smallest nor the largest covering shape: a real optimum, not the grid's edge


@dataclass(frozen=True)
class PowerLawFit:
    """``y = coefficient * x ** exponent``, fitted in log-log space."""

    exponent: float
    coefficient: float
    stderr: float  # the regression's standard error of the exponent
    ci_low: float  # bootstrap percentile interval of the exponent
    ci_high: float
    confidence: float
    n_points: int

    def predict(self, x: np.ndarray | float) -> np.ndarray:
        return self.coefficient * np.asarray(x, dtype=float) ** self.exponent


def loss_frontier(points: Sequence[ScalingPoint]) -> list[ScalingPoint]:
    """The points no cheaper-or-equal point beats: the best loss reachable at each compute."""
    frontier: list[ScalingPoint] = []
    for p in sorted(points, key=lambda p: (p.compute, p.loss)):
        if not frontier or p.loss < frontier[-1].loss:
            frontier.append(p)
    return frontier


def _envelopes(points: Sequence[ScalingPoint]) -> dict[str, tuple[float, np.ndarray, np.ndarray]]:
    """shape -> (params, log compute, lower-envelope loss) with compute ascending."""
    by_shape: dict[str, list[ScalingPoint]] = {}
    for p in points:
        if p.compute > 0 and math.isfinite(p.loss):
            by_shape.setdefault(p.shape, []).append(p)
    result = {}
    for shape, pts in by_shape.items():
        pts.sort(key=lambda p: p.compute)
        logc = np.log([p.compute for p in pts])
        loss = np.minimum.accumulate([p.loss for p in pts])  # more compute never hurts: keep the best so far
        result[shape] = (pts[0].params, logc, loss)
    return result


def compute_optimal_sizes(points: Sequence[ScalingPoint], budgets: int = 10) -> list[OptimalSize]:
    """N_opt at ``budgets`` log-spaced compute values covered by at least two shapes' curves.

    An optimum at the smallest or largest covering size only says "this far or farther"; such budgets
    are kept but marked ``interior=False`` and left out of the fit.
    """
    env = {s: e for s, e in _envelopes(points).items() if len(e[1]) >= 2}
    if len(env) < 2:
        raise ValueError("the compute-optimal analysis needs at least two model shapes with two or more "
                         "(compute, loss) points each; add token budgets, or use trajectory points")
    lo = min(e[1][0] for e in env.values())
    hi = max(e[1][-1] for e in env.values())
    result = []
    for logc in np.linspace(lo, hi, budgets):
        covering = {s: (n, float(np.interp(logc, lc, loss))) for s, (n, lc, loss) in env.items()
                    if lc[0] - 1e-9 <= logc <= lc[-1] + 1e-9}
        if len(covering) >= 2:
            shape, (params, loss) = min(covering.items(), key=lambda kv: kv[1][1])
            sizes = [n for n, _ in covering.values()]
            interior = min(sizes) < params < max(sizes)
            result.append(OptimalSize(float(np.exp(logc)), params, loss, shape, len(covering), interior))
    return result


def fit_power_law(x: Sequence[float], y: Sequence[float], *, confidence: float = 0.95, bootstrap: int = 2000,
                  seed: int = 0) -> PowerLawFit:
    """Least-squares fit of ``log y = a log x + b`` with the exponent's standard error and bootstrap CI."""
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    n = len(lx)
    if n < 3:
        raise ValueError(f"a power-law fit with a confidence interval needs at least 3 points, got {n}")
    if np.ptp(lx) == 0:
        raise ValueError("all x values are equal: the exponent is undetermined")
    a, b = np.polyfit(lx, ly, 1)
    residuals = ly - (a * lx + b)
    stderr = float(np.sqrt(residuals @ residuals / (n - 2) / ((lx - lx.mean()) @ (lx - lx.mean()))))
    rng = np.random.default_rng(seed)
    slopes = []
    for _ in range(bootstrap):
        idx = rng.integers(0, n, n)
        if np.ptp(lx[idx]) > 0:
            slopes.append(np.polyfit(lx[idx], ly[idx], 1)[0])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(slopes, [tail, 100 - tail])
    return PowerLawFit(float(a), float(np.exp(b)), stderr, float(low), float(high), confidence, n)


def scaling_points(rows: Sequence[dict[str, Any]], *, trajectory: bool, params: str = "non-embedding"
                   ) -> list[ScalingPoint]:
    """(shape, N, C, loss) of the sweep's runs: final validation losses, or every validation point."""
    key = {"non-embedding": "non_embedding_params", "total": "params"}[params]
    points = []
    for r in rows:
        if not r["curve"] or (not trajectory and r["status"] != "done"):  # an unfinished run has no final loss
            continue
        curve = r["curve"] if trajectory else r["curve"][-1:]
        shape = f"h{r['hidden']}-l{r['layers']}"
        points += [ScalingPoint(shape, r[key], r["flops_per_token"] * tokens, loss) for tokens, loss in curve if tokens]
    return points


def plot_scaling(points: Sequence[ScalingPoint], optimal: Sequence[OptimalSize], fit: PowerLawFit | None,
                 path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    try:
        for shape, (params, logc, loss) in sorted(_envelopes(points).items(), key=lambda kv: kv[1][0]):
            left.plot(np.exp(logc), loss, marker="o", ms=3, lw=1, label=f"{shape} ({format_count(params)})")
        front = loss_frontier(points)
        left.plot([p.compute for p in front], [p.loss for p in front], "k--", lw=1.5, label="frontier")
        left.set(xscale="log", yscale="log", xlabel="training compute C (FLOPs)", ylabel="validation loss",
                 title="loss vs compute")
        left.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        left.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
        left.legend(fontsize=7, ncol=2)
        inside = [o for o in optimal if o.interior]
        edge = [o for o in optimal if not o.interior]
        right.scatter([o.compute for o in inside], [o.params for o in inside], color="C3", zorder=3,
                      label="optimal size per budget")
        right.scatter([o.compute for o in edge], [o.params for o in edge], facecolors="none", edgecolors="C3",
                      zorder=3, label="at the grid's edge (not fitted)")
        if fit is not None:
            c = np.array([o.compute for o in inside])
            grid = np.geomspace(c.min(), c.max(), 50)
            right.plot(grid, fit.predict(grid), "k-", label=f"N_opt ∝ C^{fit.exponent:.3f} "
                                                            f"[{fit.ci_low:.3f}, {fit.ci_high:.3f}]")
            lx0 = np.log(grid).mean()
            for a in (fit.ci_low, fit.ci_high):  # the CI's slopes through the fit's centre
                right.plot(grid, fit.predict(np.exp(lx0)) * (grid / np.exp(lx0)) ** a, "k:", lw=1)
        right.set(xscale="log", yscale="log", xlabel="training compute C (FLOPs)", ylabel="parameters N",
                  title="compute-optimal model size")
        right.legend(fontsize=8)
        fig.tight_layout()
        atomic_save_png(fig, path)
    finally:
        plt.close(fig)


def analyze(sweep: SweepConfig, *, points_mode: str = "auto", params: str = "non-embedding", budgets: int = 10,
            console=None) -> dict[str, Any]:
    """Results table, frontier, N_opt per budget and the power-law fit; writes results.* and scaling.*."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    out = Path(sweep.out_dir)
    rows = collect_results(sweep)
    write_results(rows, out)
    console.print(results_table(rows, f"sweep {out}"))
    if points_mode == "auto":  # finals alone need two budgets per shape
        points_mode = "final" if len(sweep.tokens) >= 2 else "trajectory"
    points = scaling_points(rows, trajectory=points_mode == "trajectory", params=params)
    report: dict[str, Any] = {"points": points_mode, "params": params, "flops": "tinystories.model.flops_per_token "
                              "(6N + attention term, PaLM appendix B) x tokens trained"}
    report["frontier"] = [asdict(p) for p in loss_frontier(points)]
    optimal: list[OptimalSize] = []
    fit = None
    try:
        optimal = compute_optimal_sizes(points, budgets)
        interior = [o for o in optimal if o.interior]
        if len(interior) < 3:
            raise ValueError(f"only {len(interior)} of {len(optimal)} compute budgets have their optimum inside "
                             f"the grid (3 needed); elsewhere the best size is the grid's smallest or largest, so "
                             f"widen the size range or add token budgets")
        fit = fit_power_law([o.compute for o in interior], [o.params for o in interior])
    except ValueError as exc:
        console.print(f"[yellow]no compute-optimal fit:[/yellow] {exc}")
    report["optimal"] = [asdict(o) for o in optimal]
    report["fit"] = asdict(fit) if fit else None
    atomic_write_json(out / "scaling.json", report, indent=2)
    with open(out / "scaling.csv.tmp", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["compute", "optimal_shape", "optimal_params", "loss", "shapes_covering", "interior"])
        writer.writerows([o.compute, o.shape, o.params, o.loss, o.candidates, o.interior] for o in optimal)
    (out / "scaling.csv.tmp").replace(out / "scaling.csv")
    if points:
        plot_scaling(points, optimal, fit, out / "scaling.png")
    table = Table(title=f"compute-optimal size ({points_mode} points, {params} params)")
    for col in ("compute", "optimal shape", "params", "loss", "shapes", "in fit"):
        table.add_column(col, justify="right")
    for o in optimal:
        table.add_row(f"{o.compute:.2e}", o.shape, format_count(o.params), f"{o.loss:.4f}", str(o.candidates),
                      "yes" if o.interior else "no (grid edge)")
    console.print(table)
    if fit:
        console.print(f"N_opt ∝ C^a: a = {fit.exponent:.3f} ± {fit.stderr:.3f} (s.e.), "
                      f"{fit.confidence:.0%} bootstrap CI [{fit.ci_low:.3f}, {fit.ci_high:.3f}], "
                      f"{fit.n_points} budgets")
    console.print(f"wrote {out / 'results.csv'}, {out / 'scaling.json'}, {out / 'scaling.csv'}"
                  + (f", {out / 'scaling.png'}" if points else ""))
    return report


# ============================================================================================
# --estimate: projected wall time from a measured throughput probe on this device
# ============================================================================================
@dataclass
class Probe:
    """Measured seconds of one model shape's pieces of work on this device."""

    shape: str
    step_s: float  # one optimiser step (grad_accum micro-batches, forward + backward + AdamW)
    eval_batch_s: float  # one validation forward
    sample_s: float  # the story the trainer samples at every evaluation
    checkpoint_s: float  # one checkpoint write
    tokens_per_step: int
    device: str  # where it was measured, e.g. "cuda:0 (NVIDIA H100 80GB HBM3) bf16"

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.step_s


def probe(plan: RunPlan, *, steps: int = 5, warmup: int = 2) -> Probe:
    """Time the trainer's own step (its optimiser, dtype and autocast) on random tokens of the run's shape."""
    import tempfile
    from contextlib import nullcontext

    import torch

    from tinystories.model import GPTNeo
    from tinystories.train import make_optimizer, resolve_device, resolve_dtype

    c = plan.train_config
    device = resolve_device(c.device, 0)
    dtype = resolve_dtype(c.dtype, device)
    autocast = (torch.autocast(device.type, dtype={"fp16": torch.float16, "bf16": torch.bfloat16}[dtype])
                if dtype != "fp32" else nullcontext())
    torch.manual_seed(0)
    model = GPTNeo(plan.model_config)
    model.impl = c.impl
    model.to(device).train()
    optimizer = make_optimizer(model, c, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "fp16")
    vocab = plan.model_config.vocab_size
    x = torch.randint(0, vocab, (c.batch_size, plan.seq_len), device=device)
    y = torch.randint(0, vocab, (c.batch_size, plan.seq_len), device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn, n: int, n_warmup: int) -> float:
        for _ in range(n_warmup):
            fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        return (time.perf_counter() - t0) / n

    def train_step() -> None:
        for _ in range(c.grad_accum):
            with autocast:
                loss = model(x, y, return_logits=False).loss / c.grad_accum
            scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip if c.grad_clip > 0 else float("inf"))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def eval_batch() -> None:
        with autocast:
            model(x, y)

    @torch.no_grad()
    def sample() -> None:
        model.eval()
        prompt = x[:1, :4]
        n = max(0, min(c.sample_tokens, plan.model_config.max_position_embeddings - prompt.shape[1]))
        model.generate(prompt, n, temperature=0.8, top_k=50)
        model.train()

    step_s = timed(train_step, steps, warmup)
    eval_s = timed(eval_batch, max(1, steps // 2), 1)
    sample_s = timed(sample, 1, 0) if c.sample_tokens else 0.0
    with tempfile.TemporaryDirectory() as tmp:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        ckpt_s = timed(lambda: torch.save(state, Path(tmp) / "probe.pt"), 1, 0)
    del model, optimizer
    name = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
    return Probe(plan.run.shape, step_s, eval_s, sample_s, ckpt_s, plan.tokens_per_step, f"{name} {dtype}")


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
    return (startup_s + n * p.step_s + evals * (c.eval_batches * p.eval_batch_s + p.sample_s)
            + p.sample_s  # the story printed at the end
            + checkpoints * p.checkpoint_s)


def makespan(durations: Sequence[float], workers: int) -> float:
    """Total wall time when runs start in order on the first free worker (as :func:`run_sweep` does)."""
    free = [0.0] * max(1, workers)
    for d in durations:
        i = free.index(min(free))
        free[i] += d
    return max(free)


def estimate(sweep: SweepConfig, *, steps: int = 5, target_hours: float = 24.0, console=None) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    data_dir = prepare_data(sweep)
    plans = plan_runs(sweep, data_vocab_size(data_dir))
    startup = startup_seconds()
    probes: dict[str, Probe] = {}
    for plan in plans:
        if plan.run.shape not in probes:
            console.print(f"probing {plan.run.shape} ({steps} steps)...")
            probes[plan.run.shape] = probe(plan, steps=steps)
    runs = []
    for plan in plans:
        p = probes[plan.run.shape]
        runs.append({"name": plan.run.name, "steps": plan.max_steps, "tokens": plan.tokens,
                     "tokens_per_s": p.tokens_per_s, "estimated_s": projected_seconds(plan, p, startup)})
    workers = max(1, len(sweep.gpus))
    total = makespan([r["estimated_s"] for r in runs], workers)
    device = next(iter(probes.values())).device
    report = {"startup_s": startup, "probe_steps": steps, "workers": workers, "device": device,
              "probes": [asdict(p) for p in probes.values()], "runs": runs, "total_s": total}
    table = Table(title=f"estimated wall time on {device} ({workers} at a time, {steps} probe steps per shape)")
    for col in ("run", "steps", "tokens", "tokens/s", "estimate"):
        table.add_column(col, justify="right")
    for r in runs:
        table.add_row(r["name"], f"{r['steps']:,}", format_count(r["tokens"]), f"{r['tokens_per_s']:,.0f}",
                      format_duration(r["estimated_s"]))
    console.print(table)
    verdict = "[green]within[/green]" if total <= target_hours * 3600 else "[red]over[/red]"
    console.print(f"total: {format_duration(total)} ({format_duration(sum(r['estimated_s'] for r in runs))} of "
                  f"run time; start-up {startup:.1f}s per run measured) -- {verdict} the {target_hours:g} h target")
    Path(sweep.out_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(sweep.out_dir) / "estimate.json", report, indent=2)
    return report


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.2f}h"


# ============================================================================================
# Grading: the evaluation module over every finished run
# ============================================================================================
def finished_runs(sweep: SweepConfig) -> list[Path]:
    return [run_dir(sweep, r) for r in sweep.runs() if read_status(run_dir(sweep, r))["status"] == "done"]


def grade_commands(sweep: SweepConfig, *, grade: bool = True, probes: bool = True, device: str = "cpu",
                   extra: Sequence[str] = ()) -> list[list[str]]:
    """``tinystories eval grade`` and ``eval probes`` over all finished runs' newest checkpoints at once, so
    the evaluation module lays the scores out by hidden size x layers as in the paper. Results go to
    ``<sweep>/eval``; ``extra`` (judge model, base URL, samples...) goes to ``eval grade``."""
    runs = [str(d) for d in finished_runs(sweep)]
    if not runs:
        raise ValueError(f"{sweep.out_dir}: no finished runs to grade yet")
    out = Path(sweep.out_dir) / "eval"
    base = [sys.executable, "-m", "tinystories.cli", "eval"]
    commands = []
    if grade:
        commands.append([*base, "grade", *runs, "--device", device, "--out", str(out), *extra])
    if probes:
        commands.append([*base, "probes", *runs, "--device", device, "--html", str(out / "probes.html"),
                         "--jsonl", str(out / "probes.jsonl")])
    return commands


# ============================================================================================
# CLI: tinystories sweep run|estimate|analyze|grade
# ============================================================================================
def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _count_list(text: str) -> list[int]:
    try:
        return [parse_count(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_grid_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="sweep directory (one run directory per grid point)")
    p.add_argument("--hidden", type=_int_list, help="hidden sizes, e.g. 64,128,256")
    p.add_argument("--layers", type=_int_list, help="layer counts, e.g. 1,2,4,8")
    p.add_argument("--tokens", type=_count_list, help="training token budgets, e.g. 50M,200M")
    p.add_argument("--preset", default="demo", help="trainer preset every run starts from (default demo)")
    p.add_argument("--data", default=None, help="the trainer's --data (shard dir or text files); default: "
                                                "the trainer's offline demo corpus")
    p.add_argument("--config", default=None, help="a trainer TOML file given to every run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a trainer --key=value for every run (repeatable), e.g. --set batch_size=64")
    p.add_argument("--gpus", type=_int_list, default=[], help="run one config per GPU on these ids, e.g. 0,1,2,3")


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = sub.add_parser("run", help="run (or resume) every grid point as a tinystories-train subprocess")
    _add_grid_arguments(run)
    run.add_argument("--estimate", action="store_true", help="only print the projected wall time (as `estimate`)")
    run.add_argument("--probe-steps", type=int, default=5, help=argparse.SUPPRESS)
    run.add_argument("--target-hours", type=float, default=24.0, help=argparse.SUPPRESS)
    est = sub.add_parser("estimate", help="projected wall time per run and in total from a throughput probe")
    _add_grid_arguments(est)
    est.add_argument("--probe-steps", type=int, default=5, help="timed training steps per model shape")
    est.add_argument("--target-hours", type=float, default=24.0, help="say whether the sweep fits in this")
    ana = sub.add_parser("analyze", help="results table, loss-vs-compute frontier and the N_opt ~ C^a fit")
    ana.add_argument("out", help="sweep directory")
    ana.add_argument("--points", choices=("auto", "final", "trajectory"), default="auto",
                     help="final validation loss per run, or every validation point (auto: final when the "
                          "grid has two or more token budgets)")
    ana.add_argument("--params", choices=("non-embedding", "total"), default="non-embedding")
    ana.add_argument("--budgets", type=int, default=10, help="log-spaced compute budgets for N_opt")
    grade = sub.add_parser("grade", help="tinystories eval grade and probes over the sweep's finished runs")
    grade.add_argument("out", help="sweep directory")
    grade.add_argument("--skip-grade", dest="grade", action="store_false", help="capability probes only "
                                                                                 "(no judge needed)")
    grade.add_argument("--skip-probes", dest="probes", action="store_false", help="judge grading only")
    grade.add_argument("--device", default="cpu")
    grade.add_argument("--judge-model", help="for `eval grade`: the judge model (e.g. gpt-4o)")
    grade.add_argument("--base-url", help="for `eval grade`: an OpenAI-compatible endpoint")
    grade.add_argument("--samples", type=int, help="for `eval grade`: completions per beginning")
    grade.add_argument("--eval-args", default="", metavar='"ARGS"',
                       help='any other `tinystories eval grade` options, quoted, with "=": '
                            '--eval-args="--max-cost-usd 5 --limit-beginnings 20"')


def sweep_from_args(args: argparse.Namespace) -> SweepConfig:
    """The grid of the command line, or the manifest of an existing sweep directory when none is given."""
    grid = (args.hidden, args.layers, args.tokens)
    if all(g is None for g in grid) and (Path(args.out) / MANIFEST).is_file():
        sweep = SweepConfig.load(args.out)
        if args.gpus:
            sweep.gpus = args.gpus
        return sweep
    missing = [n for n, g in zip(("--hidden", "--layers", "--tokens"), grid) if g is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (or point --out at an existing sweep directory)")
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip().lstrip("-").replace("-", "_")] = value
    return SweepConfig(out_dir=args.out, hidden=args.hidden, layers=args.layers, tokens=args.tokens,
                       preset=args.preset, data=args.data, train_config=args.config, overrides=overrides,
                       gpus=args.gpus)


def run_cli(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    try:  # the trainer's ConfigError is a ValueError
        if args.action in ("run", "estimate"):
            sweep = sweep_from_args(args)
            if args.action == "estimate" or args.estimate:
                estimate(sweep, steps=args.probe_steps, target_hours=args.target_hours, console=console)
                return 0
            rows = run_sweep(sweep, console=console)
            write_results(rows, Path(sweep.out_dir))
            console.print(results_table(rows, f"sweep {sweep.out_dir}"))
            failed = [r["name"] for r in rows if r["status"] != "done"]
            if failed:
                console.print(f"[red]{len(failed)} run(s) not finished:[/red] {', '.join(failed)}; "
                              f"`tinystories sweep run --out {sweep.out_dir}` resumes them")
                return 1
            return 0
        sweep = SweepConfig.load(args.out)
        if args.action == "analyze":
            analyze(sweep, points_mode=args.points, params=args.params, budgets=args.budgets, console=console)
            return 0
        extra = shlex.split(args.eval_args)
        for flag, value in (("--judge-model", args.judge_model), ("--base-url", args.base_url),
                            ("--samples", args.samples)):
            if value is not None:
                extra += [flag, str(value)]
        for cmd in grade_commands(sweep, grade=args.grade, probes=args.probes, device=args.device, extra=extra):
            console.print(f"$ {' '.join(cmd)}")
            code = subprocess.run(cmd).returncode
            if code:
                return code
        return 0
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
