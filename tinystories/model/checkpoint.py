"""Training checkpoints: one self-contained ``.pt`` file per saved step, written atomically.

A checkpoint holds everything a run needs to continue bit-exactly (model, optimizer, gradient scaler,
RNG states, data-loader position, step, counters) and everything a user needs to use the model alone
(model config, the tokenizer's JSON, the training config). Files live in ``<run>/checkpoints/`` as
``step_00001000.pt``; a crash while writing leaves only a ``.tmp`` file behind, never a torn checkpoint, and
a failed write (disk full, read-only) is a :class:`CheckpointWriteError` saying how much space it needed.
Each checkpoint carries the sha256 of its tensors (:func:`tensor_digest`), checked when it is read, so damage
inside the weights (which ``torch.load`` does not notice) is an error naming the file, not a NaN run.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from tinystories.atomic import atomic_write_bytes
from tinystories.model.config import GPTNeoConfig
from tinystories.model.gpt_neo import GPTNeo
from tinystories.tokenizer import Tokenizer

FORMAT = "tinystories/checkpoint/1"
_NAME = re.compile(r"^step_(\d{8,})\.pt$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def tensor_digest(payload: Any) -> str:
    """The sha256 of every tensor in ``payload`` (nested dicts, lists and tuples), with its place, dtype and
    shape, in a fixed order; other values are not hashed. Equal on any device the tensors live on."""
    digest = hashlib.sha256()

    def walk(place: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            flat = value.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"{place}|{flat.dtype}|{tuple(value.shape)}\n".encode())
            digest.update(flat.view(torch.uint8).numpy().data)
        elif isinstance(value, dict):
            for key in sorted(value, key=repr):
                walk(f"{place}/{key!r}", value[key])
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(f"{place}/{i}", item)

    walk("", payload)
    return digest.hexdigest()


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (the message says how much space it needed); older ones are intact."""


def save_checkpoint(payload: dict[str, Any], path: str | Path, keep_last: int | None = None) -> Path:
    """Write ``payload`` to ``path`` atomically (temp file, fsync, rename), then keep only the newest ``keep_last``.

    The checkpoint is serialised in memory first, so a failed write knows the exact size it needed."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload, "tensor_sha256": tensor_digest(payload)}, buffer)
    try:
        atomic_write_bytes(path, buffer.getvalue())  # the bytes are BytesIO's own buffer, not a copy
    except OSError as exc:
        try:
            free = f"{shutil.disk_usage(path.parent).free / 1e6:,.1f} MB free there"
        except OSError:
            free = "free space unknown"
        raise CheckpointWriteError(
            f"could not write checkpoint {path} ({exc.strerror or exc}): it needs "
            f"{buffer.tell() / 1e6:,.1f} MB ({free}); the older checkpoints are kept"
        ) from exc
    if keep_last is not None:
        for old in list_checkpoints(path.parent.parent)[:-keep_last]:
            old.unlink(missing_ok=True)
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the newest checkpoint of a run directory."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        found = list_checkpoints(path.parent if path.name == "checkpoints" else path)
        if found:
            return found[-1]
        raise FileNotFoundError(f"{path}: no checkpoint yet (expected {checkpoint_dir(path)}/step_*.pt)")
    raise FileNotFoundError(f"checkpoint {path} does not exist")


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = resolve_checkpoint(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which, in one line (torch's text is a page)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a readable tinystories checkpoint ({reason[:200]})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"{path}: not a tinystories checkpoint (format {payload.get('format')!r}, expected {FORMAT!r})"
            if isinstance(payload, dict)
            else f"{path}: not a checkpoint"
        )
    recorded = payload.pop("tensor_sha256", None)  # None: written before checkpoints were hashed
    if recorded is not None and tensor_digest(payload) != recorded:
        raise ValueError(
            f"{path}: damaged checkpoint (its tensors do not match the sha256 recorded when it was written)"
        )
    payload["path"] = str(path)
    return payload


def is_hf_directory(path: Path) -> bool:
    """A Hugging Face model directory (its config.json names a model_type), not a run folder, whose
    config.json is the training configuration."""
    try:
        return "model_type" in json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPTNeo, Tokenizer, dict[str, Any]]:
    """``(model, tokenizer, config)`` from a checkpoint file, a run directory (newest checkpoint) or a
    Hugging Face GPTNeoForCausalLM directory. The model is in eval mode on ``device``; ``config`` is the
    saved training config (for a HF directory: its config.json)."""
    path = Path(path)
    if path.is_dir() and not list_checkpoints(path) and is_hf_directory(path):
        from tinystories.model.hf import load_hf_model, load_hf_tokenizer

        return (load_hf_model(path).to(device), load_hf_tokenizer(path), json.loads((path / "config.json").read_text()))
    payload = read_checkpoint(path)
    model, tokenizer = checkpoint_model(payload, path)
    return model.to(device).eval(), tokenizer, payload["train_config"]


def checkpoint_model(payload: Any, path: str | Path) -> tuple[GPTNeo, Tokenizer]:
    """The model (eval mode, on the CPU) and tokenizer of a checkpoint payload (:func:`read_checkpoint`) read
    from ``path`` (named in errors)."""
    model = _model_for(payload, Path(path))
    model.load_state_dict(payload["model"])
    return model.eval(), Tokenizer.from_json(payload["tokenizer_json"])


def _model_for(payload: Any, path: Path) -> GPTNeo:
    """The (untrained) model a checkpoint's weights go into, after checking, on the meta device, that its
    ``model_config`` describes exactly those weights: a foreign or damaged file is refused by name before a
    config that does not match them (a huge one included) allocates anything."""
    missing = [
        k
        for k in ("model_config", "model", "tokenizer_json", "train_config")
        if not isinstance(payload, dict) or k not in payload
    ]
    if missing:
        raise ValueError(f"{path}: not a tinystories checkpoint (it has no {', '.join(missing)})")
    try:
        config = GPTNeoConfig.from_dict(payload["model_config"])
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in GPTNeo(config).state_dict().items()}
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise ValueError(f"{path}: model_config is not a valid model ({exc})") from None
    saved = {k: tuple(v.shape) for k, v in payload["model"].items() if isinstance(v, torch.Tensor)}
    if saved != expected:
        name = next(iter(sorted(set(saved) ^ set(expected))), None) or next(
            k for k in sorted(expected) if saved[k] != expected[k]
        )
        raise ValueError(
            f"{path}: the weights do not match its model_config ({name}: "
            f"{saved.get(name, 'missing')} in the file, {expected.get(name, 'not in the model')} for the config)"
        )
    return GPTNeo(config)
