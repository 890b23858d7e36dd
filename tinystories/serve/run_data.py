"""What the playground shows beside a model's stories: its run's loss curve and its evaluation results.

The loss curve comes from the run's ``metrics.jsonl`` (train loss every ``log_every`` steps, validation
loss every ``eval_every``). Judge grades (``grades.jsonl``) and probe verdicts (``probes.jsonl``) are read
where ``tinystories eval`` and ``tinystories sweep grade`` put them: ``<run>/eval``, ``<sweep>/eval`` and
any ``--eval-dir``; only the records of this checkpoint count. A damaged file is named in ``problems``.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from tinystories.evaluate.report import summarize
from tinystories.jsonl import read_jsonl
from tinystories.serve.models import ModelEntry


def _records(paths: list[Path], problems: list[str]) -> list[dict[str, Any]]:
    """The records of the files that exist; a damaged line's message (naming file and line) goes to
    ``problems`` and the other records are kept."""
    records: list[dict[str, Any]] = []
    for path in paths:
        try:
            records.extend(read_jsonl(path, on_damaged=problems.append))
        except OSError as exc:
            problems.append(str(exc))
    return records


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _curve(records: list[dict[str, Any]], key: str) -> list[list[float]]:
    """``[[step, value], ...]`` of the records that have a number for both (JSON has no NaN: a diverged step is
    left out)."""
    number = (int, float)
    return [
        [r["step"], r[key]]
        for r in records
        if isinstance(r.get("step"), int) and isinstance(r.get(key), number) and math.isfinite(r[key])
    ]


def run_data(entry: ModelEntry, eval_dirs: list[Path]) -> dict[str, Any]:
    problems: list[str] = []
    metrics = _records([entry.run_dir / "metrics.jsonl"], problems)
    folders = [entry.run_dir / "eval", entry.run_dir.parent / "eval", *eval_dirs]
    grades = [r for r in _records([f / "grades.jsonl" for f in folders], problems) if r.get("checkpoint") == entry.id]
    probes = [r for r in _records([f / "probes.jsonl" for f in folders], problems) if r.get("model") == entry.id]
    data: dict[str, Any] = {
        "model": entry.id,
        "run": entry.run_dir.name,
        "step": entry.step,
        "loss": _curve(metrics, "loss"),
        "val_loss": _curve(metrics, "val_loss"),
        "grades": None,
        "probes": None,
        "problems": problems,  # damaged files, by file and line; what could be read is shown
    }
    if grades:
        summary = summarize(grades)
        data["grades"] = {
            name: {"mean": _finite(s.mean), "ci95": _finite(s.ci95), "n": s.n}
            for name, s in summary.items()
            if hasattr(s, "mean")
        }
    if probes:
        counts: dict[str, Counter] = {}
        for r in probes:
            counts.setdefault(str(r.get("suite")), Counter())[str(r.get("verdict"))] += 1
        data["probes"] = {suite: dict(c) for suite, c in counts.items()}
    return data
