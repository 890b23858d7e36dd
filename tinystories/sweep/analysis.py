"""Results and the compute-optimal fit of a sweep.

Eldan & Li (2023) trained a grid of model shapes (hidden {64..1024} x layers {1..12}) for several token
budgets and found that, even at this scale, the compute-optimal model size follows a power law in compute
(as Hoffmann et al. 2022 found for large models).

Compute: training FLOPs ``C = flops_per_token * tokens`` with :func:`tinystories.model.flops_per_token` (PaLM,
Chowdhery et al. 2022, appendix B): ``6 N`` for the matmul weights ``N`` (embedding/output head included, as it is a
matmul) plus the attention term ``12 * C_hidden * K`` per layer for the QK^T and AV products, with K the mean number
of keys a query attends to under the causal mask (``(T+1)/2`` for global layers; for local layers each query sees
``min(i+1, window)`` keys). The size in the fit is the non-embedding parameter count (Kaplan et al. 2020), since
with a 50k vocabulary the embedding dominates the small models; ``--params total`` uses every parameter.

The compute-optimal analysis (Hoffmann et al. approach 1): each model shape gives a loss-vs-compute
curve -- the final validation loss of its runs (one per token budget), or also every intermediate
validation point with ``--points trajectory`` -- reduced to its lower envelope. At log-spaced compute
budgets covered by at least two shapes, the curves are interpolated (linear in log C) and the shape with
the lowest loss is the optimal size N_opt(C). ``log N_opt = a log C + b`` is fitted by least squares; the
confidence interval of ``a`` is a bootstrap percentile interval over the (C, N_opt) pairs, reported with
the regression's standard error.
"""

from __future__ import annotations

import csv
import io
import math
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from tinystories.atomic import atomic_save_png, atomic_write_json, atomic_write_text
from tinystories.plots import pyplot
from tinystories.sweep.grid import SweepConfig, format_count
from tinystories.sweep.results import collect_results, print_problems, results_table, write_results


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
    for p in sorted((p for p in points if math.isfinite(p.loss)), key=lambda p: (p.compute, p.loss)):
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
        raise ValueError(
            "the compute-optimal analysis needs at least two model shapes with two or more "
            "(compute, loss) points each; add token budgets, or use trajectory points"
        )
    lo = min(e[1][0] for e in env.values())
    hi = max(e[1][-1] for e in env.values())
    result = []
    for logc in np.linspace(lo, hi, budgets):
        covering = {
            s: (n, float(np.interp(logc, lc, loss)))
            for s, (n, lc, loss) in env.items()
            if lc[0] - 1e-9 <= logc <= lc[-1] + 1e-9
        }
        if len(covering) >= 2:
            shape, (params, loss) = min(covering.items(), key=lambda kv: kv[1][1])
            sizes = [n for n, _ in covering.values()]
            interior = min(sizes) < params < max(sizes)
            result.append(OptimalSize(float(np.exp(logc)), params, loss, shape, len(covering), interior))
    return result


def fit_power_law(
    x: Sequence[float], y: Sequence[float], *, confidence: float = 0.95, bootstrap: int = 2000, seed: int = 0
) -> PowerLawFit:
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


def fit_optimal_sizes(optimal: Sequence[OptimalSize]) -> PowerLawFit:
    """``N_opt ∝ C^a`` over the budgets whose optimum is inside the grid; ValueError says why there is none."""
    if not optimal:
        raise ValueError(
            "no compute budget is reached by two or more model shapes (their compute ranges do not "
            "overlap), so no sizes compare at equal compute; add token budgets so the ranges overlap"
        )
    interior = [o for o in optimal if o.interior]
    if len(interior) < 3:
        raise ValueError(
            f"only {len(interior)} of {len(optimal)} compute budgets have their optimum inside "
            f"the grid (3 needed); elsewhere the best size is the grid's smallest or largest, so "
            f"widen the size range or add token budgets"
        )
    return fit_power_law([o.compute for o in interior], [o.params for o in interior])


def scaling_points(
    rows: Sequence[dict[str, Any]], *, trajectory: bool, params: str = "non-embedding"
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


def _log_compute_axis(ax: Any, computes: Sequence[float]) -> None:
    """Few, short labels on a log compute axis: powers of ten (thinned to about six) over two decades or
    more, else four log-spaced values like ``1.8e+12``; minor ticks unlabelled. (matplotlib labels every
    minor tick of a narrow range, and its long ``3.2x10^12`` labels overlap.)"""
    import matplotlib.ticker as ticker

    lo, hi = min(computes), max(computes)
    if hi >= 100 * lo:
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, numticks=7))
        ax.xaxis.set_major_formatter(ticker.LogFormatterSciNotation())
    else:
        ax.xaxis.set_major_locator(ticker.FixedLocator(sorted({float(f"{c:.2g}") for c in np.geomspace(lo, hi, 4)})))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:.2g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def plot_scaling(
    points: Sequence[ScalingPoint],
    optimal: Sequence[OptimalSize],
    fit: PowerLawFit | None,
    path: Path,
    no_fit_reason: str | None = None,
) -> None:
    """Loss vs compute (every shape, the frontier) and the optimal size per budget with the fit; with no
    budget to fit, the right panel says why (``no_fit_reason``) instead."""
    plt = pyplot()
    import matplotlib.ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    try:
        for shape, (params, logc, loss) in sorted(_envelopes(points).items(), key=lambda kv: kv[1][0]):
            left.plot(np.exp(logc), loss, marker="o", ms=3, lw=1, label=f"{shape} ({format_count(params)})")
        front = loss_frontier(points)
        left.plot([p.compute for p in front], [p.loss for p in front], "k--", lw=1.5, label="frontier")
        left.set(
            xscale="log",
            yscale="log",
            xlabel="training compute C (FLOPs)",
            ylabel="validation loss",
            title="loss vs compute",
        )
        _log_compute_axis(left, [p.compute for p in points])
        left.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        left.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
        left.legend(fontsize=7, ncol=2)
        right.set_title("compute-optimal model size")
        if not optimal:  # nothing to place on log axes: say why in the panel
            right.axis("off")
            right.text(
                0.5,
                0.5,
                "no compute-optimal fit:\n" + "\n".join(textwrap.wrap(no_fit_reason or "", 60)),
                ha="center",
                va="center",
                transform=right.transAxes,
                fontsize=9,
            )
        else:
            inside = [o for o in optimal if o.interior]
            edge = [o for o in optimal if not o.interior]
            right.scatter(
                [o.compute for o in inside],
                [o.params for o in inside],
                color="C3",
                zorder=3,
                label="optimal size per budget",
            )
            right.scatter(
                [o.compute for o in edge],
                [o.params for o in edge],
                facecolors="none",
                edgecolors="C3",
                zorder=3,
                label="at the grid's edge (not fitted)",
            )
            if fit is not None:
                c = np.array([o.compute for o in inside])
                grid = np.geomspace(c.min(), c.max(), 50)
                right.plot(
                    grid,
                    fit.predict(grid),
                    "k-",
                    label=f"N_opt ∝ C^{fit.exponent:.3f} [{fit.ci_low:.3f}, {fit.ci_high:.3f}]",
                )
                lx0 = np.log(grid).mean()
                for a in (fit.ci_low, fit.ci_high):  # the CI's slopes through the fit's centre
                    right.plot(grid, fit.predict(np.exp(lx0)) * (grid / np.exp(lx0)) ** a, "k:", lw=1)
            right.set(xscale="log", yscale="log", xlabel="training compute C (FLOPs)", ylabel="parameters N")
            _log_compute_axis(right, [o.compute for o in optimal])
            right.legend(fontsize=8)
        fig.tight_layout()
        atomic_save_png(fig, path)
    finally:
        plt.close(fig)


def analyze(
    sweep: SweepConfig,
    *,
    points_mode: str = "auto",
    params: str = "non-embedding",
    budgets: int = 10,
    console: Console | None = None,
) -> dict[str, Any]:
    """Results table, frontier, N_opt per budget and the power-law fit; writes results.* and scaling.*."""

    console = console or Console()
    out = Path(sweep.out_dir)
    rows = collect_results(sweep)
    write_results(rows, out)
    console.print(results_table(rows, f"sweep {out}"))
    print_problems(rows, console)
    if points_mode == "auto":  # finals alone need two budgets per shape
        points_mode = "final" if len(sweep.tokens) >= 2 else "trajectory"
    points = scaling_points(rows, trajectory=points_mode == "trajectory", params=params)
    report: dict[str, Any] = {
        "points": points_mode,
        "params": params,
        "flops": "tinystories.model.flops_per_token (6N + attention term, PaLM appendix B) x tokens trained",
    }
    report["frontier"] = [asdict(p) for p in loss_frontier(points)]
    optimal: list[OptimalSize] = []
    fit = None
    no_fit_reason = None
    try:
        optimal = compute_optimal_sizes(points, budgets)
        fit = fit_optimal_sizes(optimal)
    except ValueError as exc:
        no_fit_reason = str(exc)
        console.print(f"[yellow]no compute-optimal fit:[/yellow] {exc}")
    report["optimal"] = [asdict(o) for o in optimal]
    report["fit"] = asdict(fit) if fit else None
    atomic_write_json(out / "scaling.json", report, indent=2)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["compute", "optimal_shape", "optimal_params", "loss", "shapes_covering", "interior"])
    writer.writerows([o.compute, o.shape, o.params, o.loss, o.candidates, o.interior] for o in optimal)
    atomic_write_text(out / "scaling.csv", buf.getvalue())
    if points:
        plot_scaling(points, optimal, fit, out / "scaling.png", no_fit_reason)
    table = Table(title=f"compute-optimal size ({points_mode} points, {params} params)")
    for col in ("compute", "optimal shape", "params", "loss", "shapes", "in fit"):
        table.add_column(col, justify="right")
    for o in optimal:
        table.add_row(
            f"{o.compute:.2e}",
            o.shape,
            format_count(o.params),
            f"{o.loss:.4f}",
            str(o.candidates),
            "yes" if o.interior else "no (grid edge)",
        )
    console.print(table)
    if fit:
        console.print(
            f"N_opt ∝ C^a: a = {fit.exponent:.3f} ± {fit.stderr:.3f} (s.e.), "
            f"{fit.confidence:.0%} bootstrap CI [{fit.ci_low:.3f}, {fit.ci_high:.3f}], "
            f"{fit.n_points} budgets"
        )
    console.print(
        f"wrote {out / 'results.csv'}, {out / 'scaling.json'}, {out / 'scaling.csv'}"
        + (f", {out / 'scaling.png'}" if points else "")
    )
    return report
