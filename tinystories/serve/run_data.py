"""What the playground shows beside a model's stories: its run's loss curve and its evaluation results.

The loss curve comes from the run's ``metrics.jsonl`` (train loss every ``log_every`` steps, validation
loss every ``eval_every``). Judge grades (``grades.jsonl``) and probe verdicts (``probes.jsonl``) are read
where ``tinystories eval`` and ``tinystories sweep grade`` put them: ``<run>/eval``, ``<sweep>/eval`` and
any ``--eval-dir``; only the records of this checkpoint count.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from tinystories.evaluate.report import summarize
from tinystories.jsonl import read_jsonl
from tinystories.serve.models import ModelEntry


def _records(paths: list[Path]) -> list[dict[str, Any]]:
    return [r for path in paths if path.is_file() for r in read_jsonl(path)]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def run_data(entry: ModelEntry, eval_dirs: list[Path]) -> dict[str, Any]:
    metrics = _records([entry.run_dir / "metrics.jsonl"])
    folders = [entry.run_dir / "eval", entry.run_dir.parent / "eval", *eval_dirs]
    grades = [r for r in _records([f / "grades.jsonl" for f in folders]) if r.get("checkpoint") == entry.id]
    probes = [r for r in _records([f / "probes.jsonl" for f in folders]) if r.get("model") == entry.id]
    data: dict[str, Any] = {
        "model": entry.id,
        "run": entry.run_dir.name,
        "step": entry.step,
        "loss": [[r["step"], r["loss"]] for r in metrics if "loss" in r],
        "val_loss": [[r["step"], r["val_loss"]] for r in metrics if "val_loss" in r],
        "grades": None,
        "probes": None,
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
            counts.setdefault(r["suite"], Counter())[r["verdict"]] += 1
        data["probes"] = {suite: dict(c) for suite, c in counts.items()}
    return data
