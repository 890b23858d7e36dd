"""``prepare``: story corpora -> a dataset directory of zstd token shards, restartable after any crash.

index = prepare(["TinyStories-train.txt"], "data/ts", "gpt2", top_k=10_000)
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import itertools
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinystories import _core
from tinystories.atomic import atomic_write_json
from tinystories.corpus import CorpusError, CorpusReader, input_signature
from tinystories.data.shards import (
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_FILE,
    SPLITS,
    TOKENIZER_FILE,
    ShardError,
    read_index,
    sha256_file,
    token_dtype,
)
from tinystories.progress import Progress
from tinystories.tokenizer import Tokenizer, resolve_tokenizer

STATE_FILE = "prepare-state.json"
DEFAULT_SHARD_TOKENS = 1 << 27  # 128M tokens: ~120 MB per uint16 shard after compression
DEFAULT_BLOCK_TOKENS = 1 << 18  # 256K tokens per zstd frame: the unit of random access
# zstd on uint16 GPT-2 tokens of TinyStories (v1 + v2 text in 512 KB blocks, per CPU second): plain levels 1-15
# stay under 2x smaller than uint16 (12: 1.98x at 41 MB of text/s, 13: 1.99x at 18); 17 gives 2.2x at 7 MB/s.
# Matches of 2 tokens (min_match 4 bytes; the levels use 5-6) are what uint16 data needs: zstd's lazy strategy with
# them, a one-block window and a deeper hash chain gives 2.03-2.07x at 50-70 MB/s, about 8x level 17's speed.
# (Blocks under 512 KB compress less well: 1.98x at 300 KB.)
DEFAULT_LEVEL = 7  # the lazy family; the parameters below set everything that matters
DEFAULT_ZSTD_PARAMS = {
    "strategy": 4,
    "window_log": 19,
    "hash_log": 18,
    "chain_log": 19,
    "search_log": 6,
    "min_match": 4,
    "target_length": 16,
}  # strategy 4 = ZSTD_lazy
BATCH_STORIES = 4096  # stories tokenized per call


def story_in_val(story: str, val_fraction: float) -> bool:
    """The split rule: validation iff blake2b-64(UTF-8 text) / 2**64 < val_fraction.

    It depends only on the text, so a story lands in the same split on every run and machine,
    whatever the input order or thread count.
    """
    h = int.from_bytes(hashlib.blake2b(story.encode("utf-8"), digest_size=8).digest(), "big")
    return h < val_fraction * 2.0**64


def stories_in_val(stories: Sequence[str], val_fraction: float) -> list[bool]:
    """``story_in_val`` of each story, faster: big-endian digests compare as bytes like the numbers they encode."""
    limit = math.ceil(val_fraction * 2.0**64)  # h < x <=> h < ceil(x) for an integer h
    if limit <= 0 or limit >= 2**64:
        return [limit > 0] * len(stories)
    below = limit.to_bytes(8, "big")
    blake2b = hashlib.blake2b
    return [blake2b(s.encode("utf-8"), digest_size=8).digest() < below for s in stories]


@dataclass
class _SplitState:
    shards: list[dict]
    next_story: int = 0  # ordinal of the first story not in a finished shard


class DatasetWriter:
    """Writes the shards of a dataset directory; restartable, with index.json written last.

    Stories arrive with their global ordinal (position in the input). A shard is cut as soon as it
    holds ``shard_tokens`` or more, so shard contents depend only on the stories of its split; after
    every finished shard the progress is saved, and a writer created with the same ``config``
    continues after the last finished shard (``resume_from`` tells the caller which ordinals to skip).
    """

    def __init__(
        self,
        out_dir: str | Path,
        config: dict[str, Any],
        *,
        shard_tokens: int = DEFAULT_SHARD_TOKENS,
        block_tokens: int = DEFAULT_BLOCK_TOKENS,
        level: int | None = None,
        threads: int = 1,
    ):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        zstd_params = dict(DEFAULT_ZSTD_PARAMS) if level is None else {}  # an explicit level is plain zstd
        level = DEFAULT_LEVEL if level is None else level
        self.config = {
            **config,
            "shard_tokens": shard_tokens,
            "block_tokens": block_tokens,
            "zstd_level": level,
            "zstd_params": zstd_params,
        }
        self.dtype = token_dtype(int(config["n_vocab"]))
        self.shard_tokens, self.block_tokens, self.level, self.threads = shard_tokens, block_tokens, level, threads
        self.zstd_params = zstd_params
        self.splits = {s: _SplitState([]) for s in SPLITS}
        self._writers: dict[str, _core.ShardWriter] = {}
        self._next_story: dict[str, int] = {}  # ordinal after the last story added to each split
        state_path = self.out_dir / STATE_FILE
        saved = json.loads(state_path.read_text()) if state_path.is_file() else None
        if saved is not None and saved.get("config") == self.config:
            self.splits = {s: _SplitState(**saved["splits"][s]) for s in SPLITS}
        self._clean_stale()

    def _clean_stale(self) -> None:
        """Remove temp files and shards that no saved progress accounts for."""
        keep = {sh["file"] for st in self.splits.values() for sh in st.shards}
        for path in self.out_dir.iterdir():
            if path.name.endswith(".tmp") or (path.name.endswith(".tok.zst") and path.name not in keep):
                path.unlink()

    def resume_from(self, split: str) -> int:
        return self.splits[split].next_story

    def add(self, split: str, stories: Sequence[np.ndarray], ordinals: Sequence[int]) -> None:
        """Appends tokenized stories (each already ending with EOT) to ``split``."""
        lengths = np.fromiter((len(s) for s in stories), dtype=np.int64, count=len(stories))
        self.add_flat(split, np.concatenate(stories) if stories else np.zeros(0, self.dtype), lengths, ordinals)

    def add_flat(
        self, split: str, tokens: np.ndarray, lengths: np.ndarray, ordinals: Sequence[int] | np.ndarray
    ) -> None:
        """``add`` with the stories given as one array of tokens and the length of each story."""
        state = self.splits[split]
        tokens = tokens.astype(self.dtype, copy=False)
        ends = np.cumsum(lengths)
        i = 0
        while i < len(lengths):
            if split not in self._writers:
                name = f"{split}-{len(state.shards):05d}.tok.zst"
                self._writers[split] = _core.ShardWriter(
                    str(self.out_dir / name),
                    self.dtype.itemsize,
                    self.block_tokens,
                    self.level,
                    self.threads,
                    self.zstd_params,
                )
            writer = self._writers[split]
            start = int(ends[i - 1]) if i else 0
            room = self.shard_tokens - writer.n_tokens
            k = min(int(np.searchsorted(ends[i:] - start, room)) + 1, len(lengths) - i)
            writer.add_stories(tokens[start : int(ends[i + k - 1])], lengths[i : i + k])
            i += k
            self._next_story[split] = int(ordinals[i - 1]) + 1
            if writer.n_tokens >= self.shard_tokens:
                self._finish_shard(split)

    def abort(self) -> None:
        """Drops the open shards (their temp files are removed); finished shards stay for a restart."""
        self._writers.clear()

    def _finish_shard(self, split: str) -> None:
        writer = self._writers.pop(split)
        info = writer.finish()
        state = self.splits[split]
        name = f"{split}-{len(state.shards):05d}.tok.zst"
        state.shards.append({"file": name, **info, "sha256": sha256_file(self.out_dir / name)})
        state.next_story = self._next_story[split]
        atomic_write_json(
            self.out_dir / STATE_FILE,
            {
                "config": self.config,
                "splits": {s: {"shards": st.shards, "next_story": st.next_story} for s, st in self.splits.items()},
            },
        )

    def finish(self, extra: dict[str, Any] | None = None) -> dict:
        """Closes the open shards and writes index.json (last, atomically); returns the index."""
        for split in list(self._writers):
            self._finish_shard(split)
        index = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "dtype": self.dtype.name,
            **{k: v for k, v in self.config.items() if k not in ("tokenizer_fingerprint",)},
            "tokenizer": {"fingerprint": self.config["tokenizer_fingerprint"], "file": TOKENIZER_FILE},
            **(extra or {}),
            "splits": {
                s: {
                    "stories": sum(sh["stories"] for sh in st.shards),
                    "tokens": sum(sh["tokens"] for sh in st.shards),
                    "bytes": sum(sh["bytes"] for sh in st.shards),
                    "shards": st.shards,
                }
                for s, st in self.splits.items()
            },
        }
        atomic_write_json(self.out_dir / INDEX_FILE, index)
        (self.out_dir / STATE_FILE).unlink(missing_ok=True)
        return index


def _batches(
    reader: CorpusReader, size: int, val_fraction: float, n_train_inputs: int
) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
    """(stories, in validation?, ordinals) about ``size`` stories at a time; stories of the inputs after the
    first ``n_train_inputs`` are all validation."""
    stories: list[str] = []
    files: list[int] = []
    first = 0
    for chunk, file_index in itertools.chain(reader.chunks(), [([], -1)]):
        stories += chunk
        files += [file_index] * len(chunk)
        if len(stories) >= size or (file_index < 0 and stories):
            in_val = np.array(stories_in_val(stories, val_fraction), dtype=bool) | (np.array(files) >= n_train_inputs)
            yield stories, in_val, np.arange(first, first + len(stories))
            first += len(stories)
            stories, files = [], []


def check_inputs(inputs: Sequence[Path], val_inputs: Sequence[Path], *, instruct: bool = False) -> None:
    """Refuse the silent traps: a file given twice (every story doubled), a train input reused as
    --val-input (validation on training data), an input holding no story (an empty dataset)."""
    seen: dict[tuple[int, int], tuple[Path, str]] = {}
    for path, role in [(p, "input") for p in inputs] + [(p, "--val-input") for p in val_inputs]:
        if not path.is_file():
            raise CorpusError(f"{path}: corpus file not found")
        st = path.stat()
        if (st.st_dev, st.st_ino) in seen:  # the same file under any name
            first, first_role = seen[st.st_dev, st.st_ino]
            what = "given twice" if first_role == role else "is both a train input and a --val-input"
            raise CorpusError(f"{path}: {what} (as {first}); its stories would be counted twice")
        seen[st.st_dev, st.st_ino] = (path, role)
        if next(iter(CorpusReader([path], instruct=instruct)), None) is None:
            raise CorpusError(f"{path}: holds no story; an empty input would make an empty dataset")


def prepare(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    tokenizer: Tokenizer | str | Path,
    *,
    top_k: int | None = None,
    val_fraction: float = 0.01,
    threads: int | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    progress: bool = True,
    instruct: bool = False,
    val_inputs: Sequence[str | Path] = (),
    block_tokens: int = DEFAULT_BLOCK_TOKENS,
    level: int | None = None,
) -> dict:
    """Tokenize story corpora into a dataset directory of zstd token shards; returns the index.

    Each story is stored followed by the tokenizer's EOT token and lands in ``val`` iff
    ``story_in_val``; when ``val_inputs`` are given, the validation split is exactly their stories
    and every story of ``inputs`` is train (``val_fraction`` is then unused). ``top_k`` restricts
    the tokenizer on the train inputs only. Tokenization runs on ``threads`` native threads while
    the previous batch is compressed (``threads`` blocks at a time) and written; the bytes written
    do not depend on ``threads``. An interrupted run continues where it stopped when called again
    with the same arguments; a finished directory is returned as is.
    """
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    val_inputs = [val_inputs] if isinstance(val_inputs, (str, Path)) else list(val_inputs)
    check_inputs([Path(p) for p in inputs], [Path(p) for p in val_inputs], instruct=instruct)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_inputs:
        val_fraction = 0.0
    out = Path(out_dir)
    threads = threads or os.cpu_count() or 1
    reader = CorpusReader([*inputs, *val_inputs], instruct=instruct)
    tok = resolve_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
    config = {
        "inputs": input_signature(inputs),
        "val_inputs": input_signature(val_inputs),
        "instruct": instruct,
        "base_tokenizer_fingerprint": tok.fingerprint,
        "top_k": top_k,
        "val_fraction": val_fraction,
    }
    if (out / INDEX_FILE).is_file():
        index = read_index(out)
        if index.get("prepare_config") == config:
            return index
        raise ShardError(
            f"{out / INDEX_FILE}: {out} already holds a different dataset; choose another --out or delete it"
        )
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    saved_tok = out / TOKENIZER_FILE
    if top_k is not None:
        state = out / STATE_FILE
        resumable = (
            state.is_file()
            and saved_tok.is_file()
            and json.loads(state.read_text())["config"].get("prepare_config") == config
        )
        if resumable:
            tok = Tokenizer.load(saved_tok)
        else:
            tok = tok.restrict(top_k, CorpusReader(inputs, instruct=instruct), num_threads=threads)
    eot = np.array([tok.eot_token], dtype=token_dtype(tok.n_vocab))
    writer = DatasetWriter(
        out,
        {
            "prepare_config": config,
            "n_vocab": tok.n_vocab,
            "eot_token": tok.eot_token,
            "tokenizer_fingerprint": tok.fingerprint,
        },
        shard_tokens=shard_tokens,
        block_tokens=block_tokens,
        level=level,
        threads=threads,
    )
    skip = {s: writer.resume_from(s) for s in SPLITS}

    Routed = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # split -> (tokens, story lengths, ordinals)

    def tokenize(stories: list[str], in_val: np.ndarray, ordinal: np.ndarray) -> Routed:
        result = {}
        for split, mask in (("train", ~in_val), ("val", in_val)):
            chosen = np.flatnonzero(mask & (ordinal >= skip[split]))
            arrays = tok.encode_batch_to_numpy([stories[i] for i in chosen], num_threads=threads)
            lengths = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays))
            tokens = np.insert(
                np.concatenate(arrays) if arrays else eot[:0], np.cumsum(lengths), eot[0]
            )  # EOT after each
            result[split] = (tokens, lengths + 1, ordinal[chosen])
        return result

    def write(routed: Routed) -> None:
        for split, (tokens, lengths, ordinals) in routed.items():
            if len(lengths):
                writer.add_flat(split, tokens, lengths, ordinals)

    started = time.perf_counter()
    try:
        # Three stages run at once: reading, splitting and hashing the next batch (Python, in `reading`), tokenizing
        # this one (native threads) and compressing and writing the previous one (native threads, in `writing`).
        batches = _batches(reader, BATCH_STORIES, val_fraction, len(inputs))
        with (
            Progress("prepare", reader.total_bytes, unit="bytes", enabled=progress) as bar,
            concurrent.futures.ThreadPoolExecutor(1) as reading,
            concurrent.futures.ThreadPoolExecutor(1) as writing,
        ):
            # Saving the tokenizer (Python, ~0.3 s for GPT-2) goes first in `writing`: before any shard or state file,
            # while the first batch is read and tokenized.
            pending: concurrent.futures.Future = writing.submit(tok.save, saved_tok)
            tokens = 0
            next_batch = reading.submit(next, batches, None)
            while (batch := next_batch.result()) is not None:
                next_batch = reading.submit(next, batches, None)
                routed = tokenize(*batch)
                pending.result()
                pending = writing.submit(write, routed)
                tokens += sum(len(t) for t, _, _ in routed.values())
                bar.update(completed=reader.bytes_read, status=f"{reader.stories_read:,} stories  {tokens:,} tokens")
            pending.result()
            bar.update(completed=reader.total_bytes)
    except BaseException:
        writer.abort()
        if not (out / STATE_FILE).is_file():  # no finished shard a rerun could continue from: leave no half folder
            saved_tok.unlink(missing_ok=True)
            if created:
                with contextlib.suppress(OSError):
                    out.rmdir()  # only when empty
        raise
    seconds = time.perf_counter() - started
    return writer.finish({"prepare_seconds": round(seconds, 3)})
