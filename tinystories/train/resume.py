"""Continuing a run: what may change on ``--resume``, which checkpoint to continue, and the run's config.json.

* The requested config is compared with the run's saved one first. Keys that change the model's shape,
  the data or the batches (:data:`FIXED_ON_RESUME`) are refused with the list of differences; the others
  (learning rate, weight decay, dropout, grad_accum, logging...) are applied, listed in the log and
  recorded in ``config.json``'s ``history``.
* Raising ``max_steps`` extends the run on its *old* schedule: the cosine still reaches ``min_lr`` where it
  did and the new steps run at ``min_lr``. Stretching the cosine over the longer run (so the learning rate
  jumps back up) has to be asked for with ``--lr-decay-steps``. Lowering it ends the run early on the same
  schedule (above ``min_lr`` if the cosine had not reached it yet).
* A run trained before a field was renamed saved the old name; it is read as the new one, silently.
* The newest checkpoint that reads back whole is continued; a damaged newer one (a torn copy, a full disk)
  is renamed ``*.damaged`` with a warning. Temp files of killed checkpoint writes are removed at start-up.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tinystories.atomic import atomic_write_json
from tinystories.model.checkpoint import checkpoint_dir, list_checkpoints, read_checkpoint
from tinystories.runtime.device import Dist
from tinystories.runtime.errors import ConfigError
from tinystories.train.fields import NONE_MEANS, TrainConfig, current_names

# Keys a checkpoint cannot follow: the weights' shapes, the vocabulary, the batches the loader's state
# counts (batch_size, seq_len, data_mode, seed) and the data a run prepared for itself.
FIXED_ON_RESUME = (
    "preset",
    "hidden_size",
    "num_layers",
    "num_heads",
    "context",
    "window_size",
    "init_from_hf",
    "tokenizer",
    "vocab_size",
    "demo_num_stories",
    "data_mode",
    "seq_len",
    "batch_size",
    "seed",
)
NOT_COMPARED = ("resume", "out")
_TEMP = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")  # tinystories.atomic's temp names


def remove_stale_temp_files(run_dir: Path) -> tuple[int, int]:
    """Delete the temp files of interrupted atomic writes (call with the run's lock held); (files, bytes)."""
    count = size = 0
    for folder in (run_dir, checkpoint_dir(run_dir)):
        for path in folder.iterdir() if folder.is_dir() else ():
            if _TEMP.match(path.name) and path.is_file():
                size += path.stat().st_size
                path.unlink()
                count += 1
    return count, size


def config_changes(saved: dict[str, Any], config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """key -> (saved value, new value) for every key that differs (a key given its saved value is no change)."""
    new = config.model_dump()
    return {k: (saved.get(k), v) for k, v in new.items() if k not in NOT_COMPARED and saved.get(k, v) != v}


def described(key: str, value: Any, saved: dict[str, Any]) -> str:
    """A value as the messages show it; None in words (``seq_len``: the run's context, with its length)."""
    if value is not None or key not in NONE_MEANS:
        return repr(value)
    if key == "seq_len":  # the saved config was checked when read: its shape is valid
        context = TrainConfig.model_construct(**saved).gpt_neo_config(vocab_size=64).max_position_embeddings
        return f"auto ({NONE_MEANS[key]}, {context})"
    return f"auto ({NONE_MEANS[key]})"


def schedule_kept(old: int, new: int, decay: int) -> str:
    """What keeping the learning-rate schedule means when ``max_steps`` goes from ``old`` to ``new``."""
    kept = f"max_steps {old} -> {new}: the learning-rate schedule is kept (cosine to min_lr by step {decay}"
    if new > old:
        return f"{kept}, then min_lr); --lr-decay-steps={new} stretches it over the longer run instead"
    if decay > new:
        return (
            f"{kept}), so the run ends before the learning rate reaches min_lr; --lr-decay-steps={new} "
            f"ends the cosine at the new last step instead"
        )
    return f"{kept}, then min_lr)"


def reconcile(config: TrainConfig, saved: dict[str, Any], step: int) -> tuple[TrainConfig, list[str]]:
    """The config to continue with and one log line per change; raises ConfigError for a forbidden change.
    ``saved`` is the run's config (config.json or the checkpoint's), old field names included."""
    saved = current_names(saved)
    changes = config_changes(saved, config)
    fixed = {k: v for k, v in changes.items() if k in FIXED_ON_RESUME}
    if fixed:
        listed = "; ".join(
            f"{k}: run has {described(k, a, saved)}, requested {described(k, b, saved)}" for k, (a, b) in fixed.items()
        )
        raise ConfigError(
            f"--resume cannot change {', '.join(fixed)} ({listed}): these fix the model's shape or "
            f"the data; start a new --out (or --init-from-hf from an export) to change them"
        )
    if config.max_steps < step:
        raise ConfigError(f"--resume: max_steps={config.max_steps} but the checkpoint is already at step {step}")
    lines = []
    if "max_steps" in changes and "lr_decay_steps" not in changes:
        decay = saved.get("lr_decay_steps") or saved["max_steps"]
        config = config.model_copy(update={"lr_decay_steps": decay})  # keep the schedule (module docstring)
        lines.append(schedule_kept(saved["max_steps"], config.max_steps, decay))
        del changes["max_steps"]
    lines += [f"{k}: {described(k, a, saved)} -> {described(k, b, saved)}" for k, (a, b) in changes.items()]
    return config, lines


def newest_intact_checkpoint(run_dir: Path, warn: Callable[[str], None]) -> dict[str, Any] | None:
    """The newest checkpoint that reads back whole (damaged newer ones are renamed ``.damaged``), or None."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return read_checkpoint(path)
        except ValueError as exc:
            damaged = path.with_name(path.name + ".damaged")
            path.rename(damaged)
            warn(f"warning: {exc}; renamed it to {damaged.name} and falling back to the previous checkpoint")
    return None


def history_entry(event: str, step: int, changes: list[str]) -> dict[str, Any]:
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": event, "step": step, "changes": changes}


def write_run_config(run_dir: Path, record: dict[str, Any], entry: dict[str, Any]) -> None:
    """config.json: the config in force plus ``history``, one entry per start or resume (with its changes)."""
    path = run_dir / "config.json"
    history = []
    if entry["event"] == "resume" and path.is_file():
        try:
            history = json.loads(path.read_text(encoding="utf-8")).get("history", [])
        except ValueError:
            pass  # an unreadable old file: its history is lost, the new config is still written
    atomic_write_json(path, {**record, "history": [*history, entry]}, indent=2)


def loader_state_for_rank(state: dict, dist: Dist, checkpoint: str) -> dict:
    """The training loader's state of a checkpoint, for this rank.

    Rank 0 saves its loader's state; every rank has delivered the same number of batches, so the others
    continue from the same position with their own rank. Resuming with another number of processes
    would change which windows each rank reads (not bit-exact), so it is refused."""
    if state.get("world_size", 1) != dist.world_size:
        raise ConfigError(
            f"--resume: {checkpoint} was trained by {state.get('world_size', 1)} process(es) "
            f"(nnodes x nproc_per_node), this launch has {dist.world_size}; resume it with "
            f"{state.get('world_size', 1)}"
        )
    return {**state, "rank": dist.rank}
