"""A sweep's results: one row per grid point read from its run folder (parameters, compute, validation losses),
as ``results.csv``/``results.json`` and a table. A damaged file marks its run (the row's ``problems`` name the
file) and the other runs are read as usual; non-finite validation losses (a diverged run) are left out."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from tinystories.atomic import atomic_write_json, atomic_write_text
from tinystories.model.config import GPTNeoConfig, flops_per_token
from tinystories.model.gpt_neo import GPTNeo
from tinystories.progress import format_duration
from tinystories.sweep.grid import SweepConfig, format_count, read_metrics, read_status, run_dir

RESULT_COLUMNS = (
    "name",
    "hidden",
    "layers",
    "status",
    "tokens",
    "steps",
    "params",
    "non_embedding_params",
    "flops_per_token",
    "compute",
    "final_val_loss",
    "best_val_loss",
    "wall_s",
)


def collect_results(sweep: SweepConfig) -> list[dict[str, Any]]:
    """One row per grid point (RESULT_COLUMNS, plus ``curve``: [(tokens, val_loss), ...] and ``problems``: what
    was damaged or left out, naming the file). Non-finite validation losses (a diverged run) are no points."""
    rows = []
    for run in sweep.runs():
        directory = run_dir(sweep, run)
        status = read_status(directory)
        row: dict[str, Any] = {c: None for c in RESULT_COLUMNS}
        row.update(
            name=run.name,
            hidden=run.hidden,
            layers=run.layers,
            status=status["status"],
            wall_s=status.get("wall_s"),
            curve=[],
            problems=[status["problem"]] if status.get("problem") else [],
        )
        config_path = directory / "config.json"
        try:
            saved = json.loads(config_path.read_text()) if config_path.is_file() else None
            mc = GPTNeoConfig.from_dict(saved["model"]) if saved else None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            row["problems"].append(f"{config_path}: not a readable run config ({exc})")
            saved = mc = None
        if saved is not None and mc is not None:
            row.update(_run_figures(directory, saved, mc, row["problems"]))
        rows.append(row)
    return rows


def _run_figures(directory: Path, saved: dict[str, Any], mc: GPTNeoConfig, problems: list[str]) -> dict[str, Any]:
    train = saved["train"]
    seq_len = train.get("seq_len") or mc.max_position_embeddings
    tokens_per_step = train["batch_size"] * seq_len * train["grad_accum"] * saved.get("world_size", 1)
    with torch.device("meta"):  # parameter counts without allocating weights
        model = GPTNeo(mc)
    fpt = flops_per_token(mc, seq_len)
    records, damage = read_metrics(directory)
    if damage:
        problems.append(damage)
    # a resumed run may evaluate a step again: the last record of a step wins
    val = {r["step"]: float(r["val_loss"]) for r in records if "val_loss" in r}
    bad = sorted(step for step, loss in val.items() if not math.isfinite(loss))
    if bad:
        problems.append(
            f"{directory / 'metrics.jsonl'}: non-finite validation loss at step(s) "
            f"{', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''} (left out)"
        )
    curve = [(step * tokens_per_step, loss) for step, loss in sorted(val.items()) if math.isfinite(loss)]
    steps = max((r["step"] for r in records), default=0)
    figures: dict[str, Any] = dict(
        params=model.num_parameters(),
        non_embedding_params=model.num_parameters(non_embedding=True),
        flops_per_token=fpt,
        tokens=steps * tokens_per_step,
        steps=steps,
        compute=fpt * steps * tokens_per_step,
        curve=curve,
    )
    if curve:
        figures.update(final_val_loss=curve[-1][1], best_val_loss=min(loss for _, loss in curve))
    return figures


def print_problems(rows: Sequence[dict[str, Any]], console: Console) -> None:
    """One line per damaged file or left-out value, under the results table."""
    for r in rows:
        for problem in r.get("problems", []):
            console.print(f"[yellow]{r['name']}:[/yellow] {problem}", highlight=False)


def write_results(rows: Sequence[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    csv_path, json_path = out_dir / "results.csv", out_dir / "results.json"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(csv_path, buf.getvalue())
    atomic_write_json(json_path, list(rows), indent=2)
    return csv_path, json_path


def results_table(rows: Sequence[dict[str, Any]], title: str) -> Table:

    table = Table(title=title)
    for col in ("run", "status", "params (non-emb)", "tokens", "compute", "val loss", "wall"):
        table.add_column(col, justify="left" if col in ("run", "status") else "right")
    fmt = lambda v, f: "-" if v is None else f(v)  # noqa: E731
    for r in rows:
        table.add_row(
            r["name"],
            r["status"],
            fmt(r["non_embedding_params"], format_count),
            fmt(r["tokens"], format_count),
            fmt(r["compute"], lambda c: f"{c:.2e}"),
            fmt(r["final_val_loss"], lambda v: f"{v:.4f}"),
            fmt(r["wall_s"], format_duration),
        )
    return table
