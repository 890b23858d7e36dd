"""The dataset directory: what ``tinystories data prepare`` writes and every reader checks.

A dataset directory holds ``train-00000.tok.zst``, ``val-00000.tok.zst`` ... (zstd frames of token
blocks with a block index, written by ``csrc/shards.cpp``), the ``tokenizer.json`` that produced
them, and ``index.json``, written last and atomically. docs/shard_format.md specifies the bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
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

_COUNT = {"type": "integer", "minimum": 0}
# A shard is named by a plain file name inside the dataset folder: no "/", "\\" or leading "." ("../x").
SHARD_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_SPLIT = {
    "type": "object",
    "required": ["stories", "tokens", "bytes", "shards"],
    "properties": {
        "stories": _COUNT,
        "tokens": _COUNT,
        "bytes": _COUNT,
        "shards": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["file", "tokens", "stories", "bytes", "sha256"],
                "properties": {
                    "file": {"type": "string", "pattern": SHARD_NAME},
                    "tokens": _COUNT,
                    "stories": _COUNT,
                    "bytes": _COUNT,
                    "blocks": _COUNT,
                    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                },
            },
        },
    },
}
INDEX_SCHEMA = {  # what every reader of index.json relies on (docs/shard_format.md); other keys are information
    "type": "object",
    "required": ["format", "format_version", "dtype", "n_vocab", "eot_token", "tokenizer", "splits"],
    "properties": {
        "dtype": {"enum": ["uint16", "uint32"]},
        "n_vocab": {"type": "integer", "minimum": 1},
        "eot_token": _COUNT,
        "tokenizer": {"type": "object", "required": ["fingerprint"], "properties": {"fingerprint": {"type": "string"}}},
        "splits": {"type": "object", "required": list(SPLITS), "properties": {s: _SPLIT for s in SPLITS}},
    },
}


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


def schema_problems(index: Any, where: Path) -> list[str]:
    """Where ``index`` departs from :data:`INDEX_SCHEMA`, each problem naming its field."""
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(INDEX_SCHEMA).iter_errors(index), key=lambda e: list(e.path))
    return [f"{where}: {e.json_path.removeprefix('$.') or 'index'}: {e.message}" for e in errors]


def validate_index(index: dict[str, Any], where: Path) -> list[str]:
    """Problems of an index (each naming its field): the schema, then the index against itself: split totals
    are the sums of their shards, each shard file is listed once, dtype fits n_vocab, EOT is below n_vocab."""
    problems = schema_problems(index, where)
    if problems:  # the checks below rely on the schema's fields and types
        return problems
    if index["dtype"] != token_dtype(index["n_vocab"]).name:
        problems.append(
            f"{where}: dtype: {index['dtype']}, but n_vocab {index['n_vocab']} is stored as "
            f"{token_dtype(index['n_vocab']).name}"
        )
    if index["eot_token"] >= index["n_vocab"]:
        problems.append(f"{where}: eot_token: {index['eot_token']} is not below n_vocab {index['n_vocab']}")
    seen: dict[str, str] = {}
    for split, info in index["splits"].items():
        for key in ("stories", "tokens", "bytes"):
            total = sum(shard[key] for shard in info["shards"])
            if info[key] != total:
                problems.append(f"{where}: splits.{split}.{key}: {info[key]}, but its shards add up to {total}")
        for i, shard in enumerate(info["shards"]):
            if shard["file"] in seen:
                problems.append(
                    f"{where}: splits.{split}.shards[{i}].file: {shard['file']} is listed twice "
                    f"(also in {seen[shard['file']]})"
                )
            seen.setdefault(shard["file"], f"splits.{split}.shards[{i}]")
    return problems


def read_valid_index(data_dir: str | Path) -> dict[str, Any]:
    """``read_index`` that also refuses an index failing :func:`validate_index` (the first problem is raised)."""
    index = read_index(data_dir)
    problems = validate_index(index, Path(data_dir) / INDEX_FILE)
    if problems:
        raise ShardError(problems[0] + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""))
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
        raise ShardError(
            f"{path}: tokenizer fingerprint {tok.fingerprint[:16]}... does not match index.json ({recorded[:16]}...)"
        )
    return tok


def split_shards(data_dir: Path, index: dict, split: str) -> list[dict]:
    if split not in index["splits"]:
        raise ShardError(f"{data_dir / INDEX_FILE}: no split {split!r} (has {', '.join(index['splits'])})")
    return index["splits"][split]["shards"]


def check_shard_file(data_dir: Path, shard: dict) -> Path:
    """Cheap checks before opening: a plain name inside ``data_dir``, present, and the size the index recorded."""
    name = shard["file"]
    if not isinstance(name, str) or not re.fullmatch(SHARD_NAME, name):
        raise ShardError(f"{data_dir / INDEX_FILE}: shard file {name!r} is not a plain file name in the dataset folder")
    path = data_dir / name
    if not path.is_file():
        raise ShardError(f"{path}: missing shard (listed in {INDEX_FILE})")
    size = path.stat().st_size
    if size != shard["bytes"]:
        what = "truncated" if size < shard["bytes"] else "wrong size"
        raise ShardError(f"{path}: {what}: {size} bytes, but {INDEX_FILE} says {shard['bytes']}")
    return path
