"""``verify`` (is every byte of a dataset what its index says?) and ``stats`` (what is in it?)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tinystories import _core
from tinystories.data.shards import (
    INDEX_FILE,
    TOKENIZER_FILE,
    ShardError,
    check_shard_file,
    load_dataset_tokenizer,
    read_index,
    schema_problems,
    sha256_file,
    validate_index,
)


def verify(data_dir: str | Path) -> dict[str, Any]:
    """Checks index.json against its schema and itself, then every shard against it: presence, size, sha256,
    token width, index and block hashes, token, story and block counts, blocks of ``block_tokens`` tokens, token
    ids below n_vocab, no unlisted shard
    file, and the saved tokenizer (fingerprint, n_vocab, EOT).

    Returns ``{"ok", "problems", "shards", "tokens", "bytes"}``; each problem names its file or field.
    """
    data_dir = Path(data_dir)
    index = read_index(data_dir)
    problems = schema_problems(index, data_dir / INDEX_FILE)
    if problems:  # no shard list to trust
        return {"ok": False, "problems": problems, "shards": 0, "tokens": 0, "bytes": 0}
    problems = validate_index(index, data_dir / INDEX_FILE)
    tokens = size = 0
    block_tokens = index.get("block_tokens")
    if block_tokens is not None and (not isinstance(block_tokens, int) or block_tokens < 1):
        problems.append(f"{data_dir / INDEX_FILE}: block_tokens: {block_tokens!r} is not a positive integer")
    shards = [shard for info in index["splits"].values() for shard in info["shards"]]
    for shard in shards:
        try:
            path = check_shard_file(data_dir, shard)
            if sha256_file(path) != shard["sha256"]:
                raise ShardError(f"{path}: sha256 mismatch: the file's content is not what {INDEX_FILE} recorded")
            reader = _core.ShardReader(str(path))
            if reader.token_bytes != np.dtype(index["dtype"]).itemsize:
                raise ShardError(
                    f"{path}: {reader.token_bytes}-byte tokens, but {INDEX_FILE} says dtype {index['dtype']}"
                )
            if (reader.n_tokens, len(reader.story_lengths)) != (shard["tokens"], shard["stories"]):
                raise ShardError(
                    f"{path}: {reader.n_tokens} tokens / {len(reader.story_lengths)} stories, "
                    f"but {INDEX_FILE} says {shard['tokens']} / {shard['stories']}"
                )
            if "blocks" in shard and shard["blocks"] != reader.n_blocks:
                raise ShardError(f"{path}: {reader.n_blocks} blocks, but {INDEX_FILE} says {shard['blocks']}")
            for b in range(reader.n_blocks):
                if isinstance(block_tokens, int):  # every block but a shard's last holds exactly block_tokens
                    n = reader.block_info(b)["tokens"]
                    if n > block_tokens or (n != block_tokens and b < reader.n_blocks - 1):
                        raise ShardError(
                            f"{path}: block {b} holds {n} tokens, but {INDEX_FILE} says block_tokens {block_tokens}"
                        )
                block = reader.read_block(b)
                if len(block) and int(block.max()) >= index["n_vocab"]:
                    raise ShardError(
                        f"{path}: block {b} holds token id {int(block.max())} >= n_vocab {index['n_vocab']}"
                    )
            tokens += reader.n_tokens
            size += reader.file_bytes
        except ShardError as e:
            problems.append(str(e))
    listed = {shard["file"] for shard in shards}
    problems += [
        f"{path}: a shard file that {INDEX_FILE} does not list"
        for path in sorted(data_dir.glob("*.tok.zst"))
        if path.name not in listed
    ]
    if not (data_dir / TOKENIZER_FILE).is_file():
        problems.append(f"{data_dir / TOKENIZER_FILE}: missing")
    else:
        try:
            tok = load_dataset_tokenizer(data_dir)
            for key, value in (("n_vocab", tok.n_vocab), ("eot_token", tok.eot_token)):
                if index.get(key) != value:
                    problems.append(
                        f"{data_dir / INDEX_FILE}: {key}: {index.get(key)}, but {TOKENIZER_FILE} has {value}"
                    )
        except Exception as e:  # a damaged index or tokenizer file is a problem to report, whatever it raises
            problems.append(f"{data_dir / TOKENIZER_FILE}: {e}")
    return {"ok": not problems, "problems": problems, "shards": len(shards), "tokens": tokens, "bytes": size}


def stats(data_dir: str | Path, *, top: int = 20) -> dict[str, Any]:
    """Counts per split, the tokens-per-story distribution and the most frequent tokens."""
    data_dir = Path(data_dir)
    index = read_index(data_dir)
    counts = np.zeros(index["n_vocab"], dtype=np.int64)
    token_bytes = np.dtype(index["dtype"]).itemsize
    out: dict[str, Any] = {"n_vocab": index["n_vocab"], "dtype": index["dtype"], "splits": {}}
    for split, info in index["splits"].items():
        lengths = []
        for shard in info["shards"]:
            reader = _core.ShardReader(str(check_shard_file(data_dir, shard)))
            lengths.append(reader.story_lengths.astype(np.int64))
            for b in range(reader.n_blocks):
                counts += np.bincount(reader.read_block(b), minlength=len(counts))
        lengths_all = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
        split_stats: dict[str, Any] = {
            "stories": info["stories"],
            "tokens": info["tokens"],
            "shards": len(info["shards"]),
            "bytes": info["bytes"],
            "compression_vs_raw": round(info["tokens"] * token_bytes / info["bytes"], 3) if info["bytes"] else None,
        }
        if len(lengths_all):
            q = np.percentile(lengths_all, [0, 10, 50, 90, 99, 100])
            split_stats["tokens_per_story"] = {
                "mean": round(float(lengths_all.mean()), 1),
                **{k: int(v) for k, v in zip(("min", "p10", "p50", "p90", "p99", "max"), q)},
            }
            edges = np.unique(np.geomspace(max(1, q[0]), q[-1] + 1, 13).astype(np.int64))
            hist, edges = np.histogram(lengths_all, bins=edges)
            split_stats["histogram"] = [[int(a), int(b), int(c)] for a, b, c in zip(edges[:-1], edges[1:], hist)]
        out["splits"][split] = split_stats
    order = np.argsort(-counts, kind="stable")[:top]
    try:
        tok = load_dataset_tokenizer(data_dir)
        decode = tok.decode
    except Exception:  # stats still work without a readable tokenizer (ids only)
        decode = None
    out["top_tokens"] = [
        {"id": int(i), "count": int(counts[i]), **({"text": decode([int(i)])} if decode else {})}
        for i in order
        if counts[i]
    ]
    return out
