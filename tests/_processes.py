"""Processes a test started, found and ended from /proc (Linux): the check that no test leaves one behind
(``conftest``) and the tests that kill trainers, jobs and sweeps on purpose."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path


def children(pid: int | str = "self") -> list[int]:
    """The children of ``pid`` (default: this process)."""
    try:
        return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except OSError:  # ended meanwhile
        return []


def live_children(ignore: tuple[bytes, ...] = ()) -> dict[int, str]:
    """This process's running children (not zombies) whose command line contains none of ``ignore``: pid -> it."""
    live = {}
    for pid in children():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X") and not any(h in cmdline for h in ignore):
            live[pid] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    return live


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and all its descendants (stopped ones too), the children first."""
    for child in children(pid):
        kill_tree(child)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def command_line(pid: int) -> bytes:
    """``pid``'s command line, NUL-separated (empty once it has ended)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def wait_until(condition: Callable[[], object], timeout_s: float = 600, what: str = "") -> None:
    """Wait for an event (a line in a log, a file, a process state), polling; the limit is generous (a loaded
    machine is slow, not broken): it only stops a test that would otherwise hang."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
