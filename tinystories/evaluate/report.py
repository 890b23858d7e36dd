"""Statistics, tables and plots of the evaluation: mean ± 95% CI per score, the paper's hidden size x layers
layout, grades vs training step.

Terminal tables use rich; plots are matplotlib PNGs (Agg backend, imported only when a plot is drawn).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinystories.atomic import atomic_save_png
from tinystories.evaluate.conversation import AGE_GROUPS, SCORES
from tinystories.plots import pyplot

if TYPE_CHECKING:
    from rich.table import Table


# ------------------------------------------------------------------------------------------------ statistics
@dataclass(frozen=True)
class ScoreSummary:
    n: int
    mean: float
    ci95: float  # half-width of the 95% t-interval of the mean (nan when n < 2)

    def __str__(self) -> str:
        if self.n == 0:
            return "-"
        return f"{self.mean:.2f} ± {self.ci95:.2f}" if self.n > 1 else f"{self.mean:.2f}"


# Two-sided 95% Student-t quantiles t(0.975, df) for df = 1..30, as in statistical tables.
_T975 = (
    12.706205,
    4.302653,
    3.182446,
    2.776445,
    2.570582,
    2.446912,
    2.364624,
    2.306004,
    2.262157,
    2.228139,
    2.200985,
    2.178813,
    2.160369,
    2.144787,
    2.131450,
    2.119905,
    2.109816,
    2.100922,
    2.093024,
    2.085963,
    2.079614,
    2.073873,
    2.068658,
    2.063899,
    2.059539,
    2.055529,
    2.051831,
    2.048407,
    2.045230,
    2.042272,
)


def t975(df: int) -> float:
    """t(0.975, df): the table up to 30, then the Cornish-Fisher expansion (relative error < 1e-7)."""
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    terms = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    return z + sum(term / df ** (k + 1) for k, term in enumerate(terms))


def mean_ci95(values: Sequence[float]) -> ScoreSummary:
    """Mean and the half-width of its 95% Student-t confidence interval."""
    n = len(values)
    if n == 0:
        return ScoreSummary(0, math.nan, math.nan)
    mean = math.fsum(values) / n
    if n == 1:
        return ScoreSummary(1, mean, math.nan)
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return ScoreSummary(n, mean, t975(n - 1) * math.sqrt(variance / n))


AGE_INDEX = {letter: i for i, letter in enumerate(AGE_GROUPS, 1)}  # A=1 ... F=6, for averaging


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per-score mean ± 95% CI over the graded records, the age group as A=1..F=6, and failure counts."""
    records = list(records)
    graded = [r["grades"] for r in records if r.get("status") == "ok"]
    summary: dict[str, Any] = {name: mean_ci95([g[name] for g in graded]) for name in SCORES}
    summary["age"] = mean_ci95([AGE_INDEX[g["age_group"]] for g in graded])
    failures: dict[str, int] = {}
    for r in records:
        if r.get("status") != "ok":
            reason = r.get("failure") or r.get("status", "unknown")
            failures[reason] = failures.get(reason, 0) + 1
    summary["n_graded"], summary["n_items"], summary["failures"] = len(graded), len(records), failures
    return summary


def age_letter(index: float) -> str:
    """The age group nearest to a mean index (A=1 ... F=6)."""
    if math.isnan(index):
        return "-"
    return list(AGE_GROUPS)[min(max(round(index), 1), 6) - 1]


def group_by_model(records: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records per model; when a file holds grades of several judges, each (model, judge) is its own group."""
    several_judges = len({r.get("judge_model") for r in records}) > 1
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        name = f"{r['checkpoint']} [{r.get('judge_model')}]" if several_judges else r["checkpoint"]
        groups.setdefault(name, []).append(r)
    return groups


def model_facts(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """hidden size, layers, step, parameters and run of a model, from its first record."""
    first = records[0]
    return {k: first.get(k) for k in ("hidden_size", "num_layers", "step", "num_parameters", "run")}


# ------------------------------------------------------------------------------------------------ summary
def summary_table(groups: dict[str, list[dict[str, Any]]], *, title: str = "judge grades (mean ± 95% CI)") -> Table:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("model", overflow="fold")  # names tell sweep runs apart: never cut them
    for column in ("graded", *SCORES, "age group", "failures"):
        table.add_column(column, justify="right")
    for name, records in groups.items():
        s = summarize(records)
        age: ScoreSummary = s["age"]
        age_text = "-" if age.n == 0 else f"{age_letter(age.mean)} ({age.mean:.2f})"
        failures = ", ".join(f"{k}: {v}" for k, v in sorted(s["failures"].items())) or "0"
        table.add_row(name, f"{s['n_graded']}/{s['n_items']}", *(str(s[k]) for k in SCORES), age_text, failures)
    return table


# ------------------------------------------------------------------------------------------------ layout
def layout_grid(groups: dict[str, list[dict[str, Any]]]) -> tuple[list[int], list[int], dict[tuple[int, int], dict]]:
    """(hidden sizes, layer counts, (hidden, layers) -> summary) over models whose shape is known.

    Two models of one shape (e.g. two checkpoints of one run) share a cell: the later step wins.
    """
    cells: dict[tuple[int, int], tuple[int, dict]] = {}
    for records in groups.values():
        facts = model_facts(records)
        if facts["hidden_size"] is None or facts["num_layers"] is None:
            continue
        shape, step = (facts["hidden_size"], facts["num_layers"]), facts["step"] or 0
        if shape not in cells or step >= cells[shape][0]:
            cells[shape] = (step, summarize(records))
    hidden = sorted({h for h, _ in cells})
    layers = sorted({n for _, n in cells})
    return hidden, layers, {shape: summary for shape, (_, summary) in cells.items()}


def layout_table(groups: dict[str, list[dict[str, Any]]]) -> Table:
    """The paper's layout: rows hidden size, columns layers, each cell grammar / creativity / consistency / plot."""
    from rich.table import Table

    hidden, layers, cells = layout_grid(groups)
    table = Table(title="mean grades by hidden size x layers (grammar / creativity / consistency / plot)")
    table.add_column("hidden \\ layers")
    for n in layers:
        table.add_column(str(n), justify="center")
    for h in hidden:
        row = [str(h)]
        for n in layers:
            s = cells.get((h, n))
            row.append("-" if s is None or s["n_graded"] == 0 else " / ".join(f"{s[k].mean:.1f}" for k in SCORES))
        table.add_row(*row)
    return table


def layout_png(groups: dict[str, list[dict[str, Any]]], path: str | Path) -> Path:
    """One heatmap per score, hidden size (rows) x layers (columns), values written in the cells."""
    import numpy as np

    plt = pyplot()
    hidden, layers, cells = layout_grid(groups)
    fig, axes = plt.subplots(
        1,
        len(SCORES),
        figsize=(3.2 * len(SCORES), 0.6 * len(hidden) + 2.2),
        squeeze=False,
        sharey=True,
        constrained_layout=True,
    )
    for ax, score in zip(axes[0], SCORES):
        grid = np.full((len(hidden), len(layers)), np.nan)
        for (h, n), s in cells.items():
            if s["n_graded"]:
                grid[hidden.index(h), layers.index(n)] = s[score].mean
        image = ax.imshow(grid, vmin=1, vmax=10, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(layers)), [str(n) for n in layers])
        ax.set_yticks(range(len(hidden)), [str(h) for h in hidden])
        ax.set_xlabel("layers")
        ax.set_title(score)
        for i in range(len(hidden)):
            for j in range(len(layers)):
                if not math.isnan(grid[i, j]):  # dark text on the light (high) end of viridis
                    ax.text(
                        j,
                        i,
                        f"{grid[i, j]:.1f}",
                        ha="center",
                        va="center",
                        fontsize=9,
                        color="black" if grid[i, j] > 6.5 else "white",
                    )
    axes[0][0].set_ylabel("hidden size")
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="mean grade (out of 10)")
    try:
        return atomic_save_png(fig, path, dpi=120)
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------------------------ curves
def runs_with_steps(groups: dict[str, list[dict[str, Any]]]) -> dict[str, list[tuple[int, dict]]]:
    """run -> [(step, summary)] for runs with at least two graded steps."""
    runs: dict[str, list[tuple[int, dict]]] = {}
    for records in groups.values():
        facts = model_facts(records)
        if facts["step"] is not None and facts["run"]:
            runs.setdefault(facts["run"], []).append((facts["step"], summarize(records)))
    return {run: sorted(points, key=lambda p: p[0]) for run, points in runs.items() if len(points) >= 2}


def curves_png(groups: dict[str, list[dict[str, Any]]], path: str | Path) -> Path | None:
    """Grades vs training step (mean with its 95% band), one panel per run; None when no run has two steps."""
    runs = runs_with_steps(groups)
    if not runs:
        return None
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), squeeze=False, constrained_layout=True)
    for ax, (run, points) in zip(axes[0], runs.items()):
        steps = [step for step, _ in points]
        for score in SCORES:
            means = [s[score].mean for _, s in points]
            half = [0.0 if math.isnan(s[score].ci95) else s[score].ci95 for _, s in points]
            ax.plot(steps, means, marker="o", label=score)
            ax.fill_between(
                steps, [m - h for m, h in zip(means, half)], [m + h for m, h in zip(means, half)], alpha=0.15
            )
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x >= 1000 else f"{x:g}"))
        ax.set_ylabel("mean grade (out of 10)")
        ax.set_ylim(0, 10.5)
        ax.set_title(run)
        ax.grid(alpha=0.3)
        ax.legend()
    try:
        return atomic_save_png(fig, path, dpi=120)
    finally:
        plt.close(fig)
