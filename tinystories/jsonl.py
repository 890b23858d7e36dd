"""The append-only JSONL log every stage writes: synthesis records, judge grades, training metrics.

Each record is one ``write`` of one whole line, so a crash can only tear the *last* line (a write cut
short, recognisable by its missing newline). The rule is the same for every log:

* a writer opening the file cuts a torn last line off (and says so on stderr), so every line in the
  file is a complete record again before anything is appended;
* a write that fails (a full disk, a quota, an I/O error) is undone: the writer truncates the file back to
  the end of the last whole record before it raises, and, should that truncation fail too, before its next
  append; so a brief full disk costs the records written meanwhile, never the file's readability;
* a reader skips a torn last line (a writer may still be finishing it); any other line that is not a JSON
  object (damaged by something else: an old version's failed write, an editor, a disk) is skipped and
  reported naming the file and line, and the records around it are read as usual.

``fsync``: ``"always"`` after every record, ``"interval"`` at most every ``fsync_interval_s`` (default),
or ``"never"`` (the OS decides; a process crash still loses nothing already written, a power cut may).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

FSYNC_POLICIES = ("always", "interval", "never")


def repair_torn_tail(path: str | os.PathLike) -> int:
    """Cut a torn last line (one without its newline) off ``path``; returns how many bytes were cut."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        tail_start = max(0, size - (1 << 20))
        while True:  # find the last newline, reading backwards in 1 MiB steps
            f.seek(tail_start)
            cut = f.read(size - tail_start).rfind(b"\n")
            if cut >= 0 or tail_start == 0:
                break
            tail_start = max(0, tail_start - (1 << 20))
        keep = tail_start + cut + 1 if cut >= 0 else 0
        f.truncate(keep)
        os.fsync(f.fileno())
    print(f"{path}: cut a torn last line ({size - keep} bytes) left by an interrupted run", file=sys.stderr)
    return size - keep


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def read_jsonl(path: str | os.PathLike, on_damaged: Callable[[str], None] = _warn) -> Iterator[dict[str, Any]]:
    """The records of a log (none when the file does not exist), see the module docstring: a torn last line
    is skipped silently, any other damaged line is skipped and reported to ``on_damaged`` (default: a warning
    on stderr) as ``FILE:LINE: ...``."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                return
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                on_damaged(f"{path}:{number}: skipped a damaged line, not a JSON record ({e}); the others are read")
                continue
            if not isinstance(record, dict):
                on_damaged(f"{path}:{number}: skipped a line that is not a JSON object; the others are read")
                continue
            yield record


class JsonlLog:
    """An open append-only log (see the module docstring); use as a context manager or call ``close``."""

    def __init__(self, path: str | os.PathLike, *, fsync: str = "interval", fsync_interval_s: float = 1.0):
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {fsync!r}")
        self.path = Path(path)
        self.fsync, self.fsync_interval_s = fsync, fsync_interval_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        self._last_sync = time.monotonic()
        self._undo_to: int | None = None  # the end of the last whole record, while a failed write is not undone

    def append(self, record: dict[str, Any]) -> None:
        """Append one record; on an OSError the file is cut back to its last whole record, then it is raised."""
        data = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        if self._undo_to is not None:  # the previous failure could not be undone then: the file must end whole
            os.ftruncate(self._fd, self._undo_to)
            self._undo_to = None
        end = os.fstat(self._fd).st_size  # one writer per log (the run lock, the job's lock): nobody appends meanwhile
        try:
            written = os.write(self._fd, data)
            while written < len(data):  # only on a full disk or a signal; finish the line or fail loudly
                written += os.write(self._fd, data[written:])
            now = time.monotonic()
            if self.fsync == "always" or (self.fsync == "interval" and now - self._last_sync >= self.fsync_interval_s):
                os.fsync(self._fd)
                self._last_sync = now
        except OSError:
            self._undo_to = end
            try:
                os.ftruncate(self._fd, end)
                self._undo_to = None
            except OSError:
                pass  # retried before the next append
            raise

    def close(self) -> None:
        if self._fd >= 0:
            if self.fsync != "never":
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> JsonlLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
