"""The one progress display for long work (tokenizing, preparing, training, synthesis, grading, analysis),
and the one way durations are written for people (:func:`format_duration`: ``3 min 20 s``, ``5 h 07 min``).

A ``rich`` bar when enabled (rich is imported only then), nothing when disabled; either way the caller
writes the same code. ``unit="bytes"`` shows sizes and transfer speed, ``"items"`` shows ``n/total``;
``status`` is a free text column (losses, story and token counts...); the last column is the time left, rich's
estimate from the rate so far unless the caller knows better (``remaining=``, e.g. the trainer's from its
step times). :meth:`Progress.subtask` draws a second bar for a stretch of work inside the first (a validation
pass during training) and removes it after.

    with Progress("prepare", total=n_bytes, unit="bytes") as bar:
        bar.update(completed=done, status=f"{stories:,} stories")
        bar.print("a message above the bar")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import rich.progress


def format_duration(seconds: float) -> str:
    """``0.4 s``, ``42 s``, ``3 min 20 s``, ``5 h 07 min``, ``2 d 04 h``: two units at most, the smaller one
    rounded (an ETA in hours has no use for seconds)."""
    if seconds < 9.95:
        return f"{max(seconds, 0.0):.1f} s"
    if round(seconds) < 60:
        return f"{round(seconds)} s"
    if round(seconds) < 3600:
        minutes, secs = divmod(round(seconds), 60)
        return f"{minutes} min {secs:02d} s"
    if round(seconds / 60) < 24 * 60:
        hours, minutes = divmod(round(seconds / 60), 60)
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(round(seconds / 3600), 24)
    return f"{days} d {hours:02d} h"


class Progress:
    def __init__(
        self,
        description: str,
        total: float | None = None,
        *,
        unit: str = "items",
        enabled: bool = True,
        completed: float = 0,
        transient: bool = False,
    ) -> None:
        if unit not in ("items", "bytes"):
            raise ValueError(f"unit must be 'items' or 'bytes', got {unit!r}")
        self._bar: rich.progress.Progress | None = None
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            ProgressColumn,
            TextColumn,
            TransferSpeedColumn,
        )
        from rich.progress import (
            Progress as RichProgress,
        )
        from rich.text import Text

        class RemainingColumn(ProgressColumn):
            """``ETA 3 min 20 s``: the caller's ``remaining`` text, else rich's estimate from the rate so far."""

            def render(self, task: rich.progress.Task) -> Text:
                if task.fields.get("remaining") is not None:
                    return Text(task.fields["remaining"])
                left = task.time_remaining
                return Text("" if left is None or task.finished else f"ETA {format_duration(left)}")

        amount = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(),)
        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            *amount,
            TextColumn("{task.fields[status]}"),
            RemainingColumn(),
            transient=transient,
        )
        self._task = self._bar.add_task(description, total=total, status="")
        if completed:  # rich types add_task's `completed` as int; update takes the float a byte count can be
            self._bar.update(self._task, completed=completed)

    @property
    def live(self) -> bool:
        """Whether a bar is drawn (False when disabled)."""
        return self._bar is not None

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, amount: float = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, amount)

    def update(
        self,
        *,
        completed: float | None = None,
        total: float | None = None,
        status: str | None = None,
        remaining: str | None = None,
    ) -> None:
        """``remaining``: the text of the last column (e.g. ``ETA 5 h 07 min``) in place of rich's estimate."""
        if self._bar is not None:
            fields: dict[str, Any] = {} if status is None else {"status": status}
            if remaining is not None:
                fields["remaining"] = remaining
            self._bar.update(self._task, completed=completed, total=total, **fields)

    @contextmanager
    def subtask(self, description: str, total: float) -> Iterator[Callable[[], None]]:
        """A second bar below this one while the block runs, removed after it; yields the function that advances
        it by one (which does nothing when no bar is drawn)."""
        bar = self._bar
        if bar is None:
            yield lambda: None
            return
        task = bar.add_task(description, total=total, status="")
        try:
            yield lambda: bar.advance(task)
        finally:
            bar.remove_task(task)

    def print(self, text: str) -> None:
        """A line of text above the bar, or on stdout when no bar is drawn."""
        if self._bar is not None:
            self._bar.console.print(text, highlight=False, markup=False)
        else:
            print(text, flush=True)
