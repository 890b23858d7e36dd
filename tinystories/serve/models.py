"""The served models: every checkpoint found under the given paths, loaded on first use, LRU-evicted.

A path may be a checkpoint file, a run directory (each of its checkpoints) or a folder of runs (each run in
it, also inside sweeps in it: ``runs/`` serves ``runs/demo`` and ``runs/sweep/h64-l2-t50M``). A model is named
``<run>/<checkpoint stem>`` (``28M/step_00020000``), the name ``tinystories eval`` gives it in ``grades.jsonl``
and ``probes.jsonl``. It is an Instruct model when its run was trained from
an ``-instruct`` preset. At most ``max_models`` are in memory; loading one more evicts the least recently
used (its engine finishes the requests it already has).
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinystories.model.checkpoint import list_checkpoints
from tinystories.serve.engine import Engine
from tinystories.serve.protocol import Model
from tinystories.tokenizer import Tokenizer

ENGINE_STOP_S = 120.0  # how long closing the pool waits for an engine to finish its queued jobs
RUN_SEARCH_DEPTH = 3  # runs/ -> sweep/ -> run/: how deep a served folder is searched for runs


@dataclass
class ModelEntry:
    id: str
    path: Path  # the checkpoint file
    run_dir: Path
    step: int | None
    created: int  # the file's modification time (OpenAI's "created")
    instruct: bool  # from the run's config.json; the loaded checkpoint's own config has the last word

    def describe(self) -> Model:
        return Model(id=self.id, created=self.created, run=self.run_dir.name, step=self.step, instruct=self.instruct)


def _is_instruct(train_config: dict[str, Any]) -> bool:
    return str(train_config.get("preset", "")).endswith("-instruct")


def _run_train_config(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "config.json").read_text())["train"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _entry(file: Path) -> ModelEntry:
    file = file.resolve()
    run_dir = file.parent.parent if file.parent.name == "checkpoints" else file.parent
    digits = "".join(ch for ch in file.stem if ch.isdigit())
    return ModelEntry(
        id=f"{run_dir.name}/{file.stem}",
        path=file,
        run_dir=run_dir,
        step=int(digits) if digits else None,
        created=int(file.stat().st_mtime),
        instruct=_is_instruct(_run_train_config(run_dir)),
    )


def discover_models(paths: list[str | Path]) -> dict[str, ModelEntry]:
    """Model id -> entry, in the order given; a path with no checkpoint is an error naming it."""
    found: dict[str, ModelEntry] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            files = [path]
        elif list_checkpoints(path):
            files = list_checkpoints(path)
        elif path.is_dir():
            files = [f for run in _runs_under(path) for f in list_checkpoints(run)]
        else:
            raise FileNotFoundError(f"{path} does not exist")
        if not files:
            raise FileNotFoundError(
                f"{path}: no checkpoints (a .pt file, a run directory with checkpoints/, or a sweep directory of runs)"
            )
        for file in files:
            entry = _entry(file)
            if entry.id in found and found[entry.id].path != entry.path:
                raise ValueError(
                    f"two checkpoints would both be named {entry.id}: {found[entry.id].path} and {entry.path}"
                )
            found[entry.id] = entry
    return found


def _runs_under(folder: Path, depth: int = RUN_SEARCH_DEPTH) -> list[Path]:
    """The run directories below ``folder`` (a sweep of runs, a folder of runs and sweeps...), in name order."""
    runs = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if list_checkpoints(sub):
            runs.append(sub)
        elif depth > 1:
            runs += _runs_under(sub, depth - 1)
    return runs


@dataclass
class LoadedModel:
    entry: ModelEntry
    tokenizer: Tokenizer
    engine: Engine
    device: str = "cpu"
    dtype: str = "fp32"

    @property
    def context(self) -> int:
        return self.engine.context

    @property
    def vocab_size(self) -> int:
        """Token ids below this are ones both the tokenizer and the model know."""
        return min(self.tokenizer.n_vocab, self.engine.model.config.vocab_size)

    def autocast(self) -> AbstractContextManager:
        """A new autocast context for a forward pass outside the engine (one per use: its state is per thread)."""
        import torch

        from tinystories.runtime.device import autocast_context

        return autocast_context(torch.device(self.device), self.dtype)


class ModelPool:
    """Lazy loading and LRU eviction of the served models; safe to call from many requests at once."""

    def __init__(
        self,
        entries: dict[str, ModelEntry],
        *,
        max_models: int = 2,
        device: str = "cpu",
        dtype: str = "fp32",
        max_batch: int = 32,
        wait_s: float = 0.0,
    ):
        if max_models < 1:
            raise ValueError(f"max_models must be >= 1, got {max_models}")
        self.entries, self.max_models, self.device, self.dtype = entries, max_models, device, dtype
        self.max_batch, self.wait_s = max_batch, wait_s
        self.loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self.loads = 0  # how many times a checkpoint was read (tests check the laziness)
        self._locks: dict[str, asyncio.Lock] = {}
        self._retired: list[Engine] = []  # evicted engines, still finishing their jobs

    async def get(self, model_id: str) -> LoadedModel:
        """The loaded model (loading it, and evicting the least recently used, when needed); KeyError if unknown."""
        entry = self.entries[model_id]
        async with self._locks.setdefault(model_id, asyncio.Lock()):
            if model_id not in self.loaded:
                self.loaded[model_id] = await asyncio.to_thread(self._load, entry)
                self.loads += 1
            self.loaded.move_to_end(model_id)
            while len(self.loaded) > self.max_models:
                _, evicted = self.loaded.popitem(last=False)
                evicted.engine.close()
                self._retired.append(evicted.engine)
            return self.loaded[model_id]

    def _load(self, entry: ModelEntry) -> LoadedModel:
        import torch

        from tinystories.model.checkpoint import load_checkpoint
        from tinystories.runtime.device import autocast_context

        model, tokenizer, train_config = load_checkpoint(entry.path, device=self.device)
        entry.instruct = _is_instruct(train_config or {}) or entry.instruct
        engine = Engine(
            model,
            tokenizer.eot_token,
            max_batch=self.max_batch,
            wait_s=self.wait_s,
            name=entry.id,
            autocast=autocast_context(torch.device(self.device), self.dtype),
        )
        return LoadedModel(entry, tokenizer, engine, self.device, self.dtype)

    def close(self) -> None:
        """Stop every engine (each finishes the jobs it has) and wait for their threads: no thread may be inside
        torch when the interpreter exits (CPython ends such daemon threads mid-call: an abort, exit 134)."""
        engines = [loaded.engine for loaded in self.loaded.values()] + self._retired
        for engine in engines:
            engine.close()
        for engine in engines:
            engine.join(ENGINE_STOP_S)
        self.loaded.clear()
        self._retired.clear()
