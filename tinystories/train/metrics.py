"""Where a training run's numbers go: the files (:class:`Metrics`: ``metrics.jsonl`` and TensorBoard), the screen
(:class:`TrainDisplay`) and the step timings behind tokens/s and the ETA (:class:`StepClock`).

The display speaks from the first step. On a terminal a rich bar shows step, loss, tokens/s and the ETA, and a
transient second bar follows each validation pass. Elsewhere (logs, CI, subprocesses: ``display=plain``) it
prints a line at the first step of the process and then every ``log_every`` steps, and a line when a validation
pass starts and one with its result. Either way, once the step times have settled, one line projects the wall
time of the whole run, e.g. ``projected: 10,000 steps ≈ 18 h 20 min at 1,234 tokens/s on cpu``.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tinystories.jsonl import JsonlLog
from tinystories.progress import Progress, format_duration

WARMUP_STEPS = 1  # a process's first steps pay one-off work (allocation, compilation, autotuning): not its pace
SETTLED_STEPS = 2  # timed steps after the warm-up before the ETA is trusted and the run's time projected
RECENT_STEPS = 50  # the ETA follows the mean time of this many latest steps


class Metrics:
    """metrics.jsonl (see :mod:`tinystories.jsonl`) and TensorBoard scalars when tensorboard is installed."""

    def __init__(self, run_dir: Path, tensorboard: bool) -> None:
        self._log = JsonlLog(run_dir / "metrics.jsonl")
        self.failed_writes = 0
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                pass  # tensorboard is optional; metrics.jsonl has everything

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record``; a failed write (full disk...) is reported once and training goes on."""
        try:
            self._log.append(record)
            if self._tb is not None:
                for key, value in record.items():
                    if key != "step" and isinstance(value, (int, float)):
                        self._tb.add_scalar(key, value, record["step"])
        except OSError as exc:
            if not self.failed_writes:
                print(
                    f"warning: could not write metrics to {self._log.path} ({exc}); training goes on (further "
                    f"failures are counted, not shown)",
                    file=sys.stderr,
                    flush=True,
                )
            self.failed_writes += 1

    def close(self) -> None:
        self._log.close()
        if self._tb is not None:
            self._tb.close()


class StepClock:
    """Seconds of training per step. A step's time runs from the end of the previous one, or from :meth:`restart`
    after a pause (evaluation, checkpoint, logging), which is not training throughput.

    Two readings: :meth:`take_window`, the mean over the steps since the last call (the metrics record's tokens/s),
    and :meth:`seconds_per_step`, the mean of the recent steps after the warm-up (the ETA).
    """

    def __init__(self) -> None:
        self.steps = 0  # steps timed by this process
        self._mark = time.perf_counter()
        self._window_s, self._window_steps = 0.0, 0
        self._warmup: list[float] = []
        self._recent: deque[float] = deque(maxlen=RECENT_STEPS)

    def restart(self) -> None:
        self._mark = time.perf_counter()

    def tick(self) -> None:
        """A step ended now."""
        now = time.perf_counter()
        seconds, self._mark = now - self._mark, now
        self._window_s += seconds
        self._window_steps += 1
        self.steps += 1
        (self._warmup if self.steps <= WARMUP_STEPS else self._recent).append(seconds)

    def take_window(self) -> float:
        """Mean seconds per step since the last call; the next window starts empty."""
        mean = self._window_s / self._window_steps
        self._window_s, self._window_steps = 0.0, 0
        return mean

    @property
    def settled(self) -> bool:
        """Whether enough steps after the warm-up were timed to trust :meth:`seconds_per_step`."""
        return self.steps >= WARMUP_STEPS + SETTLED_STEPS

    @property
    def just_settled(self) -> bool:
        """Whether the step just timed is the one that settled the clock (once per process)."""
        return self.steps == WARMUP_STEPS + SETTLED_STEPS

    def seconds_per_step(self) -> float:
        """The recent steps' mean; until a step after the warm-up is timed, the warm-up's."""
        samples = self._recent or self._warmup
        return sum(samples) / len(samples)

    def eta(self, steps_left: int) -> str:
        """``5 h 07 min`` for ``steps_left`` steps at the recent pace, marked ``(warm-up)`` until it settles."""
        text = format_duration(self.seconds_per_step() * steps_left)
        return text if self.settled else f"{text} (warm-up)"

    def projection(self, step: int, last_step: int, tokens_per_step: int, where: str) -> str:
        """``projected: 10,000 steps ≈ 18 h 20 min at 1,234 tokens/s on cpu``: the wall time of this process's
        steps (all of the run's unless it resumed) at the settled pace; ``step`` is the step just taken."""
        seconds, first = self.seconds_per_step(), step - self.steps
        steps = f"{last_step:,} steps" if first == 0 else f"steps {first:,} to {last_step:,}"
        return (
            f"projected: {steps} ≈ {format_duration(seconds * (last_step - first))} at "
            f"{tokens_per_step / seconds:,.0f} tokens/s on {where}"
        )


class TrainDisplay:
    """What the trainer shows on rank 0 (other ranks show nothing): a rich bar on a terminal (``display=rich``,
    or ``auto`` with a terminal), plain lines otherwise. :meth:`print` writes above the bar while it is drawn."""

    def __init__(self, total_steps: int, completed: int, *, mode: str, enabled: bool) -> None:
        self.total_steps, self.enabled = total_steps, enabled
        rich = enabled and (mode == "rich" or (mode == "auto" and sys.stdout.isatty()))
        self._bar = Progress("train", total_steps, completed=completed, enabled=rich)
        self._drawn = False

    def __enter__(self) -> TrainDisplay:
        self._bar.__enter__()
        self._drawn = self._bar.live
        return self

    def __exit__(self, *exc: object) -> None:
        self._drawn = False
        self._bar.__exit__(*exc)

    def print(self, text: str) -> None:
        if self._drawn:
            self._bar.print(text)
        elif self.enabled:
            print(text, flush=True)

    def step(self, step: int, stats: str, eta: str, *, line: bool) -> None:
        """The bar moves at every step; a plain line is printed only when ``line``."""
        if self._bar.live:
            self._bar.update(completed=step, status=stats, remaining=f"ETA {eta}")
        elif line:
            self.print(f"step {step}/{self.total_steps} | {stats} | ETA {eta}")

    @contextmanager
    def validation(self, step: int, batches: int) -> Iterator[Callable[[], None]]:
        """A validation pass of ``batches`` batches: a transient bar, or a plain line as it starts; yields the
        function that advances it by one batch."""
        if not self._bar.live:
            self.print(f"step {step}: validation loss over {batches} batches...")
        with self._bar.subtask("validation", batches) as advance:
            yield advance
