"""The one progress display for long work (tokenizing, preparing, training, synthesis, grading, analysis).

A ``rich`` bar when enabled (rich is imported only then), nothing when disabled; either way the caller
writes the same code. ``unit="bytes"`` shows sizes and transfer speed, ``"items"`` shows ``n/total``;
``status`` is a free text column (losses, story and token counts...).

    with Progress("prepare", total=n_bytes, unit="bytes") as bar:
        bar.update(completed=done, status=f"{stories:,} stories")
        bar.print("a message above the bar")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import rich.progress


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
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import (
            Progress as RichProgress,
        )

        amount = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(),)
        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            *amount,
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            transient=transient,
        )
        self._task = self._bar.add_task(description, total=total, completed=completed, status="")

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

    def update(self, *, completed: float | None = None, total: float | None = None, status: str | None = None) -> None:
        if self._bar is not None:
            fields = {} if status is None else {"status": status}
            self._bar.update(self._task, completed=completed, total=total, **fields)

    def print(self, text: str) -> None:
        """A line of text above the bar, or on stdout when no bar is drawn."""
        if self._bar is not None:
            self._bar.console.print(text, highlight=False, markup=False)
        else:
            print(text, flush=True)
