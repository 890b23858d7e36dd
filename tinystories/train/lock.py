"""One trainer per run directory: an OS file lock on ``<run>/.lock`` held for the whole run.

``flock`` belongs to the open file, so the kernel releases it when the process ends in any way (SIGKILL and
power cuts included): a stale lock cannot exist. The file itself only says who holds the lock (PID, host,
start time), for the message a second trainer prints before it stops.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path


class RunLocked(RuntimeError):
    """Another live process trains in this run directory."""


class RunLock:
    """``with RunLock(run_dir): ...`` holds the run directory's lock or raises :class:`RunLocked` at once."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self._fd = -1

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLocked(
                f"{self.path.parent} is in use by another trainer (PID {holder.get('pid', '?')} on host "
                f"{holder.get('host', '?')}, since {holder.get('since', '?')}); wait for it to end, stop "
                f"it, or choose another --out"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
            ).encode()
            + b"\n",
            0,
        )
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the file releases the lock
            self._fd = -1


def lock_holder(run_dir: str | Path) -> dict | None:
    """Who holds ``run_dir``'s lock now (``{}`` when it does not say yet), or None when nobody does."""
    path = Path(run_dir) / ".lock"
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # free (closing the file below releases this look)
    except BlockingIOError:
        return _read_holder(fd)
    finally:
        os.close(fd)


def _read_holder(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return holder if isinstance(holder, dict) else {}
    except ValueError:  # the holder is between truncating and writing its line
        return {}
