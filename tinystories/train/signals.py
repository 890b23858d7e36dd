"""Stopping a run cleanly: SIGINT (Ctrl-C), SIGTERM (schedulers, SLURM before its kill) and SIGUSR1 (SLURM's
``--signal=USR1@<seconds>`` warning) ask the loop to write a checkpoint at the next step boundary and exit
with status 128 + the signal's number (130, 143, 138), so a scheduler sees that the run did not finish and
can requeue it with ``--resume``. A second Ctrl-C (a second or more after the first) stops at once, without a
checkpoint. Under DDP the ranks agree on the signal (:func:`agreed_signal`), so all stop at the same step.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import torch

from tinystories.runtime.device import Dist

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class Interrupted(Exception):
    """The run stopped on a signal after saving its checkpoint; the exit status is ``128 + signum``."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class StopSignals:
    """``with StopSignals() as stop:`` then ``stop.signum`` is the first stop signal received (None before)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._since = 0.0
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Ctrl-C twice: the user does not want to wait for the checkpoint. Copies of one Ctrl-C arrive within
        # milliseconds (the terminal signals the whole process group, and a parent such as `sweep run` or
        # torchrun forwards it again), so only a SIGINT a second or more after the first one counts.
        if self.signum == signal.SIGINT == signum and time.monotonic() - self._since >= 1.0:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum, self._since = signum, time.monotonic()
            hint = " (Ctrl-C again stops without it)" if signum == signal.SIGINT else ""
            text = f"\n{signal.Signals(signum).name} received: writing a checkpoint at the end of this step{hint}\n"
            os.write(2, text.encode())  # print() here could interrupt a print: a reentrant error

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread only
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def agreed_signal(signum: int | None, dist: Dist, device: torch.device) -> int:
    """The stop signal any rank received (0: none); under DDP all ranks stop at the same step."""
    if not dist.enabled:
        return signum or 0
    flag = torch.tensor([signum or 0], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag.item())
