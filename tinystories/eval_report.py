"""Tables and plots of the evaluation: grade summaries, the paper's hidden size x layers layout, grades vs step.

Terminal tables use rich; plots are matplotlib PNGs (Agg backend, imported only when a plot is drawn).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinystories.grading import SCORES, ScoreSummary, age_letter, summarize
from tinystories.atomic import atomic_save_png





def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
def summary_table(groups: dict[str, list[dict[str, Any]]], *, title: str = "judge grades (mean ± 95% CI)") -> Any:
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


def layout_table(groups: dict[str, list[dict[str, Any]]]) -> Any:
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

    plt = _pyplot()
    hidden, layers, cells = layout_grid(groups)
    fig, axes = plt.subplots(1, len(SCORES), figsize=(3.2 * len(SCORES), 0.6 * len(hidden) + 2.2), squeeze=False,
                             sharey=True, constrained_layout=True)
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
                    ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=9,
                            color="black" if grid[i, j] > 6.5 else "white")
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
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), squeeze=False, constrained_layout=True)
    for ax, (run, points) in zip(axes[0], runs.items()):
        steps = [step for step, _ in points]
        for score in SCORES:
            means = [s[score].mean for _, s in points]
            half = [0.0 if math.isnan(s[score].ci95) else s[score].ci95 for _, s in points]
            ax.plot(steps, means, marker="o", label=score)
            ax.fill_between(steps, [m - h for m, h in zip(means, half)], [m + h for m, h in zip(means, half)],
                            alpha=0.15)
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
