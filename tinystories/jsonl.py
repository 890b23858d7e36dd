"""The append-only JSONL log every stage writes: synthesis records, judge grades, training metrics.

Each record is one ``write`` of one whole line, so a crash can only tear the *last* line (a write cut
short, recognisable by its missing newline). The rule is the same for every log:

* a writer opening the file cuts a torn last line off (and says so on stderr), so every line in the
  file is a complete record again before anything is appended;
* a reader skips a torn last line (a writer may still be finishing it) and treats any other line that
  is not a JSON object as an error naming the file and line.

``fsync``: ``"always"`` after every record, ``"interval"`` at most every ``fsync_interval_s`` (default),
or ``"never"`` (the OS decides; a process crash still loses nothing already written, a power cut may).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
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


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The records of a log (none when the file does not exist); see the module docstring for torn lines."""
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
                raise ValueError(
                    f"{path}:{number}: not a JSON record ({e}); only the last line can be torn by a "
                    f"crash, so this line was damaged otherwise: fix or delete it"
                ) from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: not a JSON object")
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

    def append(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        written = os.write(self._fd, data)
        while written < len(data):  # only on a full disk or a signal; finish the line or fail loudly
            written += os.write(self._fd, data[written:])
        now = time.monotonic()
        if self.fsync == "always" or (self.fsync == "interval" and now - self._last_sync >= self.fsync_interval_s):
            os.fsync(self._fd)
            self._last_sync = now

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
