"""Where ``tinystories eval probes|novelty|loss --out DIR`` keep their results: one file per kind in DIR
(``probes.jsonl`` and ``probes.html``, ``novelty.jsonl``, ``loss.json``), shared by every run that writes
there, as ``grades.jsonl`` is. A run replaces the records of the models it evaluated and keeps the others
(``tinystories serve --eval-dir DIR`` shows them all), and says so: no other run's results go silently.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from tinystories.atomic import atomic_write_text
from tinystories.jsonl import read_jsonl

Record = dict[str, Any]


def jsonl_text(records: list[Record]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def _read(path: Path) -> list[Record]:
    if path.suffix == ".json":
        records = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(records, list):
            raise ValueError(f"{path}: not a list of results; choose another --out")
        return records
    return list(read_jsonl(path))


def save_results(path: Path, records: list[Record], *, key: Callable[[Record], Hashable]) -> list[Record]:
    """Write ``records`` to ``path`` (``.json``: a list; else JSONL) after the records already there whose
    ``key`` (the model, ...) none of them has; return everything written."""
    earlier = _read(path) if path.is_file() else []
    new_keys = {key(r) for r in records}
    kept = [r for r in earlier if key(r) not in new_keys]
    everything = kept + records
    text = json.dumps(everything, indent=1) + "\n" if path.suffix == ".json" else jsonl_text(everything)
    atomic_write_text(path, text)
    replaced = len(earlier) - len(kept)
    print(
        f"wrote {path}: {len(records)} records"
        + (f", {len(kept)} of other models kept" if kept else "")
        + (f", {replaced} earlier of these models replaced" if replaced else "")
    )
    return everything
