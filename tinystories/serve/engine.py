"""One loaded model behind a thread that batches concurrent requests into one forward pass.

Requests queue as jobs (a job = the rows of one HTTP request). The thread takes the first waiting job,
waits up to ``wait_s`` for more to arrive (none if the batch is already full), and runs every job that
fits (``max_batch`` rows, the longest prompt plus the most new tokens within the context) through
:func:`~tinystories.model.generate.generate_rows` at once; jobs that do not fit wait for the next batch.
Each row has its own settings and generator, so a request gets the same tokens in any batch.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from tinystories.model.generate import Row, generate_rows
from tinystories.model.gpt_neo import GPTNeo


@dataclass
class Job:
    rows: list[Row]
    done: Callable[[list[list[int]] | None, BaseException | None], None]  # (tokens per row, error)

    @property
    def width(self) -> int:
        return max(len(row.prompt) for row in self.rows)

    @property
    def steps(self) -> int:
        return max(row.max_new_tokens for row in self.rows)


class Engine:
    def __init__(
        self,
        model: GPTNeo,
        eos: int,
        *,
        max_batch: int = 32,
        wait_s: float = 0.01,
        name: str = "model",
        autocast: AbstractContextManager = nullcontext(),  # noqa: B008 (stateless, shared safely)
    ):
        self.model, self.eos, self.max_batch, self.wait_s, self.autocast = model, eos, max_batch, wait_s, autocast
        self.context = model.config.max_position_embeddings
        self.batches: list[int] = []  # rows per forward batch run (for tests and the benchmark)
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def close(self) -> None:
        """Finish the jobs already queued, then stop the thread."""
        self._queue.put(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        waiting: deque[Job] = deque()
        closing = False
        while not (closing and not waiting):
            if not waiting:
                job = self._queue.get()
                if job is None:
                    return
                waiting.append(job)
            deadline = time.monotonic() + self.wait_s
            while not closing and sum(len(j.rows) for j in waiting) < self.max_batch:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    closing = True
                else:
                    waiting.append(job)
            self._run_batch(self._take_batch(waiting))

    def _take_batch(self, waiting: deque[Job]) -> list[Job]:
        """The oldest jobs that fit together; the first job always runs (the API checked it fits alone)."""
        batch = [waiting.popleft()]
        kept: deque[Job] = deque()
        while waiting:
            job = waiting.popleft()
            rows = sum(len(j.rows) for j in batch) + len(job.rows)
            width, steps = max(job.width, *(j.width for j in batch)), max(job.steps, *(j.steps for j in batch))
            (batch if rows <= self.max_batch and width + steps <= self.context else kept).append(job)
        waiting.extend(kept)
        return batch

    def _run_batch(self, batch: list[Job]) -> None:
        rows = [row for job in batch for row in job.rows]
        self.batches.append(len(rows))
        try:
            with self.autocast:  # entered in this thread: autocast state is per thread
                tokens = generate_rows(self.model, rows, self.eos)
        except Exception as exc:  # a failed batch fails its requests, never the server
            for job in batch:
                job.done(None, exc)
            return
        start = 0
        for job in batch:
            job.done(tokens[start : start + len(job.rows)], None)
            start += len(job.rows)
