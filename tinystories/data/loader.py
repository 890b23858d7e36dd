"""``TokenLoader``: (x, y) training batches from a prepared split, made by native threads (csrc/loader.h).

loader = TokenLoader("data/ts", batch_size=32, seq_len=512)
x, y = next(loader)                           # (32, 512) int64 numpy arrays
state = loader.state()                        # JSON-serialisable; load_state(state) resumes exactly
pickle.loads(pickle.dumps(loader))            # a fresh loader, same arguments, same next batch
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tinystories import _core
from tinystories.data.shards import INDEX_FILE, ShardError, check_shard_file, read_valid_index, split_shards

MIX_BLOCKS = 8  # blocks whose sequences are shuffled together (see csrc/loader.h)
# More native threads than this is a typo, not a plan; std::thread cannot report a failed start to Python
# (the process aborts with `terminate called`), so absurd counts are refused here.
MAX_THREADS = 1024


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
        if not 1 <= threads <= MAX_THREADS or prefetch < 1:
            raise ValueError(
                f"threads must be in [1, {MAX_THREADS}] and prefetch >= 1, got threads={threads}, prefetch={prefetch}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of world_size {world_size}")
        self.data_dir = Path(data_dir)
        self.index = read_valid_index(self.data_dir)
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
        shards = split_shards(self.data_dir, self.index, split)
        self._paths = [str(check_shard_file(self.data_dir, s)) for s in shards]
        for path, shard in zip(self._paths, shards):
            reader = _core.ShardReader(path)  # validates header, index hash and block table
            if reader.n_tokens != shard["tokens"]:
                raise ShardError(f"{path}: holds {reader.n_tokens} tokens, but {INDEX_FILE} says {shard['tokens']}")
        self._exhausted = False
        self._core = self._start(0)

    def _start(self, start_batch: int) -> _core.TokenLoaderCore:
        return _core.TokenLoaderCore(
            self._paths,
            self.batch_size,
            self.seq_len,
            self.mode == "stories",
            self.seed,
            self.rank,
            self.world_size,
            self.prefetch,
            self.threads,
            self.shuffle,
            self.loop,
            int(self.index["eot_token"]),
            MIX_BLOCKS,
            start_batch,
        )

    def __iter__(self) -> TokenLoader:
        if self._exhausted:  # a finished single pass (validation) starts over
            del self._core  # joins the old workers first
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
            "split": self.split,
            "mode": self.mode,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "shuffle": self.shuffle,
            "loop": self.loop,
            "fingerprint": self.fingerprint,
            "tokens": self.index["splits"][self.split]["tokens"],
        }

    def state(self) -> dict[str, Any]:
        """JSON-serialisable position: the next batch to deliver, plus what it depends on."""
        return {"version": 1, "next_batch": int(self._core.next_batch), **self._identity()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue exactly after the batch that was last delivered when ``state`` was taken."""
        mismatched = {k: (state.get(k), v) for k, v in self._identity().items() if state.get(k) != v}
        if state.get("version") != 1 or mismatched:
            details = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in mismatched.items())
            raise ValueError(f"loader state does not match this loader ({details or 'unknown state version'})")
        del self._core  # stop the old workers before starting new ones
        self._core = self._start(int(state["next_batch"]))
        self._exhausted = False

    def _arguments(self) -> dict[str, Any]:
        """The keyword arguments that make this loader again; ``expected_fingerprint`` pins its tokenizer, so a
        copy made where ``data_dir`` now holds other shards refuses them instead of training on them."""
        return {
            "data_dir": self.data_dir,
            "split": self.split,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "mode": self.mode,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "prefetch": self.prefetch,
            "threads": self.threads,
            "shuffle": self.shuffle,
            "loop": self.loop,
            "pin_memory": self.pin_memory,
            "expected_fingerprint": self.fingerprint,
        }

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any], dict[str, Any]]]:
        """Pickled as its arguments and its position (``state()``): the native threads and their buffers stay
        here, and unpickling (in a ``multiprocessing`` or ``DataLoader`` worker, or ``copy.deepcopy``) starts a
        fresh loader on the same shards whose next batch is this one's next batch. Batches this loader has
        already prefetched are not carried; they are made again. A relative ``data_dir`` is read from the
        unpickling process's working directory."""
        return _unpickle_loader, (self._arguments(), self.state())

    def read_tokens(self, start: int, count: int) -> np.ndarray:
        """Tokens [start, start + count) of the split's concatenated stream, as int64."""
        return self._core.read_tokens(start, count)


def _unpickle_loader(arguments: dict[str, Any], state: dict[str, Any]) -> TokenLoader:
    loader = TokenLoader(**arguments)
    loader.load_state(state)
    return loader
