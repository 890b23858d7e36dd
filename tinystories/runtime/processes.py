"""Child processes that do not outlive their parent: the trainer under ``sweep run`` or a sweep job, the LLM
client's workers. Call :func:`die_with_parent` in the child (``Popen(preexec_fn=...)`` or first thing in a
``multiprocessing`` target): on Linux the kernel sends it ``signum`` when the parent dies, however the parent
dies (SIGKILL included); a trainer saves a checkpoint on SIGTERM and stops, a worker is simply killed."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(signum: int = signal.SIGTERM, parent_pid: int | None = None) -> None:
    """Ask the kernel for ``signum`` when the parent dies (Linux; elsewhere nothing); when the parent
    (``parent_pid``, taken before the fork) already died before this took effect, exit at once."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
