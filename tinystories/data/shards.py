"""The dataset directory: what ``tinystories data prepare`` writes and every reader checks.

A dataset directory holds ``train-00000.tok.zst``, ``val-00000.tok.zst`` ... (zstd frames of token
blocks with a block index, written by ``csrc/shards.cpp``), the ``tokenizer.json`` that produced
them, and ``index.json``, written last and atomically. docs/shard_format.md specifies the bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from tinystories import _core
from tinystories.tokenizer import Tokenizer

FORMAT_NAME = "tinystories-token-shards"
FORMAT_VERSION = 1
IGNORE_INDEX = -100
SPLITS = ("train", "val")
INDEX_FILE = "index.json"
TOKENIZER_FILE = "tokenizer.json"

ShardError = _core.ShardError


def token_dtype(n_vocab: int) -> np.dtype:
    return np.dtype(np.uint16) if n_vocab <= 1 << 16 else np.dtype(np.uint32)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def read_index(data_dir: str | Path) -> dict[str, Any]:
    """The dataset's index.json, after checking that this code can read its format version."""
    path = Path(data_dir) / INDEX_FILE
    if not path.is_file():
        raise ShardError(f"{path}: missing: not a prepared dataset directory (run `tinystories data prepare`)")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT_NAME:
        raise ShardError(f"{path}: not a {FORMAT_NAME} index")
    if index.get("format_version") != FORMAT_VERSION:
        raise ShardError(
            f"{path}: format version {index.get('format_version')!r}, but this version of tinystories "
            f"reads version {FORMAT_VERSION}; re-run `tinystories data prepare`"
        )
    return index


def load_dataset_tokenizer(data_dir: str | Path) -> Tokenizer:
    """The ``Tokenizer`` saved with the dataset (checked against the index's fingerprint)."""
    index = read_index(data_dir)
    path = Path(data_dir) / TOKENIZER_FILE
    if not path.is_file():
        raise ShardError(f"{path}: missing: every dataset directory holds the tokenizer that made it")
    recorded = index.get("tokenizer", {}).get("fingerprint") if isinstance(index.get("tokenizer"), dict) else None
    if not isinstance(recorded, str):
        raise ShardError(f"{Path(data_dir) / INDEX_FILE}: no tokenizer.fingerprint field")
    tok = Tokenizer.load(path)
    if tok.fingerprint != recorded:
        raise ShardError(f"{path}: tokenizer fingerprint {tok.fingerprint[:16]}... does not match index.json "
                         f"({recorded[:16]}...)")
    return tok


def split_shards(data_dir: Path, index: dict, split: str) -> list[dict]:
    if split not in index["splits"]:
        raise ShardError(f"{data_dir / INDEX_FILE}: no split {split!r} (has {', '.join(index['splits'])})")
    return index["splits"][split]["shards"]


def check_shard_file(data_dir: Path, shard: dict) -> Path:
    """Cheap checks before opening: present, and the size the index recorded."""
    path = data_dir / shard["file"]
    if not path.is_file():
        raise ShardError(f"{path}: missing shard (listed in {INDEX_FILE})")
    size = path.stat().st_size
    if size != shard["bytes"]:
        what = "truncated" if size < shard["bytes"] else "wrong size"
        raise ShardError(f"{path}: {what}: {size} bytes, but {INDEX_FILE} says {shard['bytes']}")
    return path

