"""Token shards on disk and the threaded loader that feeds a trainer from them.

A dataset directory holds ``train-00000.tok.zst``, ``val-00000.tok.zst`` ... (zstd frames of token
blocks with a block index, written by ``csrc/shards.cpp``), the ``tokenizer.json`` that produced
them, and ``index.json``, written last and atomically. docs/shard_format.md specifies the bytes.

    index = prepare(["TinyStories-train.txt"], "data/ts", "gpt2")
    loader = TokenLoader("data/ts", batch_size=32, seq_len=512)
    x, y = next(loader)                           # (32, 512) int64 numpy arrays
    state = loader.state()                        # JSON-serialisable; load_state(state) resumes exactly
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tinystories import _core
from tinystories.atomic import atomic_write_json
from tinystories.corpus import CorpusReader, input_signature

FORMAT_NAME = "tinystories-token-shards"
FORMAT_VERSION = 1
IGNORE_INDEX = -100
SPLITS = ("train", "val")
INDEX_FILE = "index.json"
TOKENIZER_FILE = "tokenizer.json"
STATE_FILE = "prepare-state.json"
DEFAULT_SHARD_TOKENS = 1 << 27  # 128M tokens: ~120 MB per uint16 shard after compression
DEFAULT_BLOCK_TOKENS = 1 << 18  # 256K tokens per zstd frame: the unit of random access
DEFAULT_LEVEL = 17  # measured on 1.5M TinyStories tokens: 2.20x vs uint16 like level 19 at 1.5-3x its speed; 13: 1.96x
MIX_BLOCKS = 8  # blocks whose sequences are shuffled together (see csrc/loader.h)
BATCH_STORIES = 4096  # stories tokenized per call

ShardError = _core.ShardError


class TokenizerLike(Protocol):
    """What ``prepare`` needs from a tokenizer (``tinystories.tokenizer.Tokenizer`` has it all)."""

    n_vocab: int
    eot_token: int
    fingerprint: str

    def encode_batch_to_numpy(self, texts: Sequence[str], *, num_threads: int | None = None) -> list[np.ndarray]: ...
    def save(self, path: str | Path) -> None: ...
    def restrict(self, top_k: int, corpus: Any, *, num_threads: int | None = None) -> TokenizerLike: ...


def _token_dtype(n_vocab: int) -> np.dtype:
    return np.dtype(np.uint16) if n_vocab <= 1 << 16 else np.dtype(np.uint32)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def story_in_val(story: str, val_fraction: float) -> bool:
    """The split rule: validation iff blake2b-64(UTF-8 text) / 2**64 < val_fraction.

    It depends only on the text, so a story lands in the same split on every run and machine,
    whatever the input order or thread count.
    """
    h = int.from_bytes(hashlib.blake2b(story.encode("utf-8"), digest_size=8).digest(), "big")
    return h < val_fraction * 2.0**64


# ---------------------------------------------------------------------------------------------
# Reading an index


def read_index(data_dir: str | Path) -> dict:
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


def load_dataset_tokenizer(data_dir: str | Path):
    """The ``Tokenizer`` saved with the dataset (checked against the index's fingerprint)."""
    from tinystories.tokenizer import Tokenizer

    index = read_index(data_dir)
    path = Path(data_dir) / TOKENIZER_FILE
    if not path.is_file():
        raise ShardError(f"{path}: missing: every dataset directory holds the tokenizer that made it")
    tok = Tokenizer.load(path)
    if tok.fingerprint != index["tokenizer"]["fingerprint"]:
        raise ShardError(
            f"{path}: tokenizer fingerprint {tok.fingerprint[:16]}... does not match index.json "
            f"({index['tokenizer']['fingerprint'][:16]}...)"
        )
    return tok


def _split_shards(data_dir: Path, index: dict, split: str) -> list[dict]:
    if split not in index["splits"]:
        raise ShardError(f"{data_dir / INDEX_FILE}: no split {split!r} (has {', '.join(index['splits'])})")
    return index["splits"][split]["shards"]


def _check_shard_file(data_dir: Path, shard: dict) -> Path:
    """Cheap checks before opening: present, and the size the index recorded."""
    path = data_dir / shard["file"]
    if not path.is_file():
        raise ShardError(f"{path}: missing shard (listed in {INDEX_FILE})")
    size = path.stat().st_size
    if size != shard["bytes"]:
        what = "truncated" if size < shard["bytes"] else "wrong size"
        raise ShardError(f"{path}: {what}: {size} bytes, but {INDEX_FILE} says {shard['bytes']}")
    return path


# ---------------------------------------------------------------------------------------------
# Loader


class TokenLoader:
    """(x, y) batches of shape (batch_size, seq_len) from a prepared split; see csrc/loader.h.

    * ``mode="packed"``: windows of seq_len + 1 tokens over the split's concatenated stream (stories
      separated by EOT), stride seq_len, so every token is a target exactly once per epoch.
    * ``mode="stories"``: every row starts at a story start; a story longer than seq_len continues
      in further rows (it is split, never truncated); short rows are padded with EOT in x and
      ``IGNORE_INDEX`` in y.
    * Epoch order is a seeded permutation (a function of seed and epoch only); rank r of
      world_size W takes every W-th sequence; ``state()``/``load_state()`` resume at the next batch.
    * ``loop=False`` makes one pass (the last batch may have fewer rows); ``shuffle=False`` keeps
      file order. Batches are int64 numpy arrays sharing one native buffer (no copies); with
      ``pin_memory=True`` they are returned as pinned torch tensors instead.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        split: str = "train",
        batch_size: int,
        seq_len: int,
        mode: str = "packed",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 4,
        threads: int = 2,
        shuffle: bool = True,
        loop: bool = True,
        pin_memory: bool = False,
        expected_fingerprint: str | None = None,
    ):
        if mode not in ("packed", "stories"):
            raise ValueError(f"mode must be 'packed' or 'stories', got {mode!r}")
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of world_size {world_size}")
        self.data_dir = Path(data_dir)
        self.index = read_index(self.data_dir)
        fingerprint = self.index["tokenizer"]["fingerprint"]
        if expected_fingerprint is not None and expected_fingerprint != fingerprint:
            raise ShardError(
                f"{self.data_dir / INDEX_FILE}: tokenizer fingerprint {fingerprint[:16]}... differs from the "
                f"expected {expected_fingerprint[:16]}...: these shards were made with another tokenizer"
            )
        if pin_memory:
            import torch

            if not torch.cuda.is_available():
                raise ValueError("pin_memory=True needs CUDA (torch.cuda.is_available() is False)")
        self.split, self.batch_size, self.seq_len, self.mode = split, batch_size, seq_len, mode
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.prefetch, self.threads, self.shuffle, self.loop = prefetch, threads, shuffle, loop
        self.pin_memory = pin_memory
        self.fingerprint = fingerprint
        shards = _split_shards(self.data_dir, self.index, split)
        self._paths = [str(_check_shard_file(self.data_dir, s)) for s in shards]
        for path, shard in zip(self._paths, shards):
            reader = _core.ShardReader(path)  # validates header, index hash and block table
            if reader.n_tokens != shard["tokens"]:
                raise ShardError(f"{path}: holds {reader.n_tokens} tokens, but {INDEX_FILE} says {shard['tokens']}")
        self._exhausted = False
        self._core = self._start(0)

    def _start(self, start_batch: int) -> _core.TokenLoaderCore:
        return _core.TokenLoaderCore(
            self._paths, self.batch_size, self.seq_len, self.mode == "stories", self.seed, self.rank,
            self.world_size, self.prefetch, self.threads, self.shuffle, self.loop, int(self.index["eot_token"]),
            MIX_BLOCKS, start_batch,
        )  # fmt: skip

    def __iter__(self) -> TokenLoader:
        if self._exhausted:  # a finished single pass (validation) starts over
            self._core = None  # joins the old workers first
            self._core = self._start(0)
            self._exhausted = False
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        batch = self._core.next()
        if batch is None:
            self._exhausted = True
            raise StopIteration
        if self.pin_memory:
            import torch

            return tuple(torch.from_numpy(a).pin_memory() for a in batch)  # type: ignore[return-value]
        return batch

    def __len__(self) -> int:
        """Batches in one pass (loop=False only)."""
        if self.loop:
            raise TypeError("a looping TokenLoader has no length; use loop=False for a single pass")
        return self._core.total_batches

    @property
    def tokens_per_epoch(self) -> int:
        """Target (non-padding) tokens in one epoch of the split, all ranks together."""
        return self._core.target_tokens_per_epoch

    @property
    def sequences_per_epoch(self) -> int:
        return self._core.units_per_epoch

    @property
    def epoch(self) -> int:
        """Epoch of the next row this rank will deliver."""
        return self._core.next_batch * self.batch_size // max(self._core.units_per_rank_epoch, 1)

    def _identity(self) -> dict[str, Any]:
        return {
            "split": self.split, "mode": self.mode, "batch_size": self.batch_size, "seq_len": self.seq_len,
            "seed": self.seed, "rank": self.rank, "world_size": self.world_size, "shuffle": self.shuffle,
            "loop": self.loop, "fingerprint": self.fingerprint,
            "tokens": self.index["splits"][self.split]["tokens"],
        }  # fmt: skip

    def state(self) -> dict[str, Any]:
        """JSON-serialisable position: the next batch to deliver, plus what it depends on."""
        return {"version": 1, "next_batch": int(self._core.next_batch), **self._identity()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue exactly after the batch that was last delivered when ``state`` was taken."""
        mismatched = {k: (state.get(k), v) for k, v in self._identity().items() if state.get(k) != v}
        if state.get("version") != 1 or mismatched:
            details = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in mismatched.items())
            raise ValueError(f"loader state does not match this loader ({details or 'unknown state version'})")
        self._core = None  # stop the old workers before starting new ones
        self._core = self._start(int(state["next_batch"]))
        self._exhausted = False

    def read_tokens(self, start: int, count: int) -> np.ndarray:
        """Tokens [start, start + count) of the split's concatenated stream, as int64."""
        return self._core.read_tokens(start, count)


# ---------------------------------------------------------------------------------------------
# Writing


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

    def __init__(self, out_dir: str | Path, config: dict[str, Any], *, shard_tokens: int = DEFAULT_SHARD_TOKENS,
                 block_tokens: int = DEFAULT_BLOCK_TOKENS, level: int = DEFAULT_LEVEL, threads: int = 1):  # fmt: skip
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.config = {**config, "shard_tokens": shard_tokens, "block_tokens": block_tokens, "zstd_level": level}
        self.dtype = _token_dtype(int(config["n_vocab"]))
        self.shard_tokens, self.block_tokens, self.level, self.threads = shard_tokens, block_tokens, level, threads
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
        state = self.splits[split]
        lengths = np.fromiter((len(s) for s in stories), dtype=np.int64, count=len(stories))
        i = 0
        while i < len(stories):
            if split not in self._writers:
                name = f"{split}-{len(state.shards):05d}.tok.zst"
                self._writers[split] = _core.ShardWriter(str(self.out_dir / name), self.dtype.itemsize,
                                                         self.block_tokens, self.level, self.threads)  # fmt: skip
            writer = self._writers[split]
            room = self.shard_tokens - writer.n_tokens
            k = min(int(np.searchsorted(np.cumsum(lengths[i:]), room)) + 1, len(stories) - i)
            writer.add_stories(np.concatenate(stories[i : i + k]).astype(self.dtype, copy=False), lengths[i : i + k])
            i += k
            self._next_story[split] = ordinals[i - 1] + 1
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
        state.shards.append({"file": name, **info, "sha256": _sha256(self.out_dir / name)})
        state.next_story = self._next_story[split]
        atomic_write_json(self.out_dir / STATE_FILE, {"config": self.config, "splits": {
            s: {"shards": st.shards, "next_story": st.next_story} for s, st in self.splits.items()}})  # fmt: skip

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


def _resolve_tokenizer(tokenizer: TokenizerLike | str | Path) -> TokenizerLike:
    if isinstance(tokenizer, (str, Path)):
        from tinystories.tokenizer import resolve_tokenizer

        return resolve_tokenizer(tokenizer)
    return tokenizer


def _batches(reader: CorpusReader, size: int) -> Iterator[list[tuple[str, int]]]:
    """Lists of (story, index of its input file)."""
    batch: list[tuple[str, int]] = []
    for story in reader:
        batch.append((story, reader.file_index))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def prepare(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    tokenizer: TokenizerLike | str,
    *,
    top_k: int | None = None,
    val_fraction: float = 0.01,
    threads: int | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    progress: bool = True,
    instruct: bool = False,
    val_inputs: Sequence[str | Path] = (),
    block_tokens: int = DEFAULT_BLOCK_TOKENS,
    level: int = DEFAULT_LEVEL,
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
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_inputs:
        val_fraction = 0.0
    out = Path(out_dir)
    threads = threads or os.cpu_count() or 1
    reader = CorpusReader([*inputs, *val_inputs], instruct=instruct)
    tok = _resolve_tokenizer(tokenizer)
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
        raise ShardError(f"{out / INDEX_FILE}: {out} already holds a different dataset; choose another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    saved_tok = out / TOKENIZER_FILE
    if top_k is not None:
        state = out / STATE_FILE
        resumable = state.is_file() and saved_tok.is_file() and json.loads(state.read_text())["config"].get("prepare_config") == config
        if resumable:
            from tinystories.tokenizer import Tokenizer

            tok = Tokenizer.load(saved_tok)
        else:
            tok = tok.restrict(top_k, CorpusReader(inputs, instruct=instruct), num_threads=threads)
    eot = np.array([tok.eot_token], dtype=_token_dtype(tok.n_vocab))
    writer = DatasetWriter(
        out,
        {"prepare_config": config, "n_vocab": tok.n_vocab, "eot_token": tok.eot_token, "tokenizer_fingerprint": tok.fingerprint},
        shard_tokens=shard_tokens, block_tokens=block_tokens, level=level, threads=threads,
    )  # fmt: skip
    tok.save(saved_tok)
    skip = {s: writer.resume_from(s) for s in SPLITS}

    def tokenize(batch: list[tuple[str, int]], first: int) -> dict[str, tuple[list[np.ndarray], list[int]]]:
        routed: dict[str, tuple[list[str], list[int]]] = {s: ([], []) for s in SPLITS}
        for i, (story, file_index) in enumerate(batch):
            split = "val" if file_index >= len(inputs) or story_in_val(story, val_fraction) else "train"
            if first + i >= skip[split]:
                routed[split][0].append(story)
                routed[split][1].append(first + i)
        result = {}
        for split, (texts, ordinals) in routed.items():
            arrays = tok.encode_batch_to_numpy(texts, num_threads=threads) if texts else []
            result[split] = ([np.concatenate((a, eot)) for a in arrays], ordinals)
        return result

    def write(routed: dict[str, tuple[list[np.ndarray], list[int]]]) -> None:
        for split, (arrays, ordinals) in routed.items():
            if arrays:
                writer.add(split, arrays, ordinals)

    started = time.perf_counter()
    try:
        with _Progress(reader, enabled=progress) as bar, concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending: concurrent.futures.Future | None = None
            first = 0
            for batch in _batches(reader, BATCH_STORIES):
                routed = tokenize(batch, first)  # overlaps with writing the previous batch
                first += len(batch)
                if pending is not None:
                    pending.result()
                pending = pool.submit(write, routed)
                bar.update(tokens=sum(len(a) for arrays, _ in routed.values() for a in arrays))
            if pending is not None:
                pending.result()
    except BaseException:
        writer.abort()
        raise
    seconds = time.perf_counter() - started
    return writer.finish({"prepare_seconds": round(seconds, 3)})


class _Progress:
    """A rich progress bar over input bytes with story and token counts (or nothing)."""

    def __init__(self, reader: CorpusReader, *, enabled: bool):
        self.reader, self.enabled, self.tokens = reader, enabled, 0

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

            self._bar = Progress(
                TextColumn("[bold]prepare"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                TextColumn("{task.fields[stories]:,} stories  {task.fields[tokens]:,} tokens"), TimeRemainingColumn(),
            )  # fmt: skip
            self._bar.start()
            self._task = self._bar.add_task("prepare", total=self.reader.total_bytes, stories=0, tokens=0)
        return self

    def update(self, *, tokens: int) -> None:
        self.tokens += tokens
        if self.enabled:
            self._bar.update(self._task, completed=self.reader.bytes_read, stories=self.reader.stories_read, tokens=self.tokens)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._bar.update(self._task, completed=self.reader.total_bytes)
            self._bar.stop()


# ---------------------------------------------------------------------------------------------
# Inspecting


def _iter_shards(data_dir: Path, index: dict) -> Iterator[tuple[str, dict]]:
    for split, info in index["splits"].items():
        for shard in info["shards"]:
            yield split, shard


def verify(data_dir: str | Path) -> dict[str, Any]:
    """Checks every shard against index.json: presence, size, sha256, index and block hashes,
    token and story counts, token ids below n_vocab, and the saved tokenizer's fingerprint.

    Returns ``{"ok", "problems", "shards", "tokens", "bytes"}``; each problem names its file.
    """
    data_dir = Path(data_dir)
    index = read_index(data_dir)
    problems: list[str] = []
    tokens = size = 0
    shards = list(_iter_shards(data_dir, index))
    for _, shard in shards:
        path = data_dir / shard["file"]
        try:
            _check_shard_file(data_dir, shard)
            if _sha256(path) != shard["sha256"]:
                raise ShardError(f"{path}: sha256 mismatch: the file's content is not what {INDEX_FILE} recorded")
            reader = _core.ShardReader(str(path))
            if (reader.n_tokens, len(reader.story_lengths)) != (shard["tokens"], shard["stories"]):
                raise ShardError(f"{path}: {reader.n_tokens} tokens / {len(reader.story_lengths)} stories, "
                                 f"but {INDEX_FILE} says {shard['tokens']} / {shard['stories']}")  # fmt: skip
            for b in range(reader.n_blocks):
                block = reader.read_block(b)
                if len(block) and int(block.max()) >= index["n_vocab"]:
                    raise ShardError(f"{path}: block {b} holds token id {int(block.max())} >= n_vocab {index['n_vocab']}")
            tokens += reader.n_tokens
            size += reader.file_bytes
        except ShardError as e:
            problems.append(str(e))
    if not (data_dir / TOKENIZER_FILE).is_file():
        problems.append(f"{data_dir / TOKENIZER_FILE}: missing")
    else:
        try:
            load_dataset_tokenizer(data_dir)
        except ImportError:  # tinystories.tokenizer unavailable: nothing to compare against
            pass
        except Exception as e:
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
            reader = _core.ShardReader(str(_check_shard_file(data_dir, shard)))
            lengths.append(reader.story_lengths.astype(np.int64))
            for b in range(reader.n_blocks):
                counts += np.bincount(reader.read_block(b), minlength=len(counts))
        lengths_all = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
        split_stats: dict[str, Any] = {
            "stories": info["stories"], "tokens": info["tokens"], "shards": len(info["shards"]), "bytes": info["bytes"],
            "compression_vs_raw": round(info["tokens"] * token_bytes / info["bytes"], 3) if info["bytes"] else None,
        }  # fmt: skip
        if len(lengths_all):
            q = np.percentile(lengths_all, [0, 10, 50, 90, 99, 100])
            split_stats["tokens_per_story"] = {"mean": round(float(lengths_all.mean()), 1),
                                              **{k: int(v) for k, v in zip(("min", "p10", "p50", "p90", "p99", "max"), q)}}  # fmt: skip
            edges = np.unique(np.geomspace(max(1, q[0]), q[-1] + 1, 13).astype(np.int64))
            hist, edges = np.histogram(lengths_all, bins=edges)
            split_stats["histogram"] = [[int(a), int(b), int(c)] for a, b, c in zip(edges[:-1], edges[1:], hist)]
        out["splits"][split] = split_stats
    order = np.argsort(-counts, kind="stable")[:top]
    try:
        tok = load_dataset_tokenizer(data_dir)
        decode = tok.decode
    except Exception:  # stats still work without the tokenizer (ids only)
        decode = None
    out["top_tokens"] = [{"id": int(i), "count": int(counts[i]), **({"text": decode([int(i)])} if decode else {})}
                         for i in order if counts[i]]  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
# Command line: tinystories data prepare|stats|verify


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("prepare", help="tokenize corpora into zstd token shards")
    p.add_argument("inputs", nargs="+", help=".txt / .jsonl corpora, optionally .zst-compressed")
    p.add_argument("--tokenizer", required=True, help="gpt2, gpt-neo, a tokenizer .json, or a dir with vocab.json+merges.txt")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--top-k", type=int, default=None, help="restrict the vocabulary to the K most frequent tokens (paper: 10000)")
    p.add_argument("--val-fraction", type=float, default=0.01, help="share of stories (by text hash) held out (default 0.01)")
    p.add_argument("--val-input", action="append", default=[], metavar="FILE",
                   help="a held-out file that forms the validation split instead (repeatable; --val-fraction unused)")
    p.add_argument("--threads", type=int, default=None, help="tokenizer threads (default: all cores)")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard")
    p.add_argument("--level", type=int, default=DEFAULT_LEVEL, help=f"zstd level (default {DEFAULT_LEVEL})")
    p.add_argument("--instruct", action="store_true", help="render JSONL instruction fields in the TinyStoriesInstruct layout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    s = sub.add_parser("stats", help="counts, tokens-per-story histogram, top tokens")
    s.add_argument("data_dir")
    s.add_argument("--top", type=int, default=20, help="how many frequent tokens to list")
    s.add_argument("--json", action="store_true", help="print JSON instead of tables")
    v = sub.add_parser("verify", help="check every shard's sha256 and block hashes")
    v.add_argument("data_dir")


def run_cli(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    try:
        if args.action == "prepare":
            index = prepare(args.inputs, args.out, args.tokenizer, top_k=args.top_k, val_fraction=args.val_fraction,
                            threads=args.threads, shard_tokens=args.shard_tokens, progress=not args.no_progress,
                            instruct=args.instruct, val_inputs=args.val_input, level=args.level)  # fmt: skip
            for split, info in index["splits"].items():
                console.print(f"{split}: {info['stories']:,} stories, {info['tokens']:,} tokens, "
                              f"{len(info['shards'])} shards, {info['bytes'] / 1e6:.1f} MB")  # fmt: skip
            console.print(f"wrote {args.out} in {index.get('prepare_seconds', 0):.1f} s")
            return 0
        if args.action == "verify":
            report = verify(args.data_dir)
            for problem in report["problems"]:
                console.print(f"[red]FAIL[/red] {problem}", highlight=False, soft_wrap=True)
            verdict = "[green]OK[/green]" if report["ok"] else f"[red]{len(report['problems'])} problem(s)[/red]"
            console.print(f"{verdict}: {report['shards']} shards, {report['tokens']:,} tokens, {report['bytes'] / 1e6:.1f} MB")
            return 0 if report["ok"] else 1
        result = stats(args.data_dir, top=args.top)
        if args.json:
            print(json.dumps(result, indent=1))
            return 0
        table = Table(title=f"{args.data_dir} ({result['dtype']}, n_vocab {result['n_vocab']:,})")
        for col in ("split", "stories", "tokens", "shards", "MB", "x vs raw", "tokens/story p10/p50/p90/max"):
            table.add_column(col, justify="right")
        for split, s in result["splits"].items():
            q = s.get("tokens_per_story", {})
            table.add_row(split, f"{s['stories']:,}", f"{s['tokens']:,}", str(s["shards"]), f"{s['bytes'] / 1e6:.2f}",
                          str(s["compression_vs_raw"]), "/".join(str(q.get(k, "-")) for k in ("p10", "p50", "p90", "max")))  # fmt: skip
        console.print(table)
        for split, s in result["splits"].items():
            if s.get("histogram"):
                peak = max(c for _, _, c in s["histogram"]) or 1
                console.print(f"[bold]{split}[/bold] tokens per story")
                for lo, hi, c in s["histogram"]:
                    console.print(f"  {lo:>6}-{hi - 1:<6} {'#' * round(40 * c / peak):<40} {c:,}", highlight=False)
        console.print("[bold]top tokens[/bold]: " + ", ".join(
            f"{t['text']!r}" if "text" in t else str(t["id"]) for t in result["top_tokens"]) + "")  # fmt: skip
        return 0
    except (ShardError, ValueError, OSError) as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        return 1
