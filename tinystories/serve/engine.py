"""One loaded model's engine behind a thread: the requests of every HTTP client join one continuous batch.

Jobs (a :class:`~tinystories.model.engine.Job` = the rows of one HTTP request) are queued from the
event loop; the thread takes whatever has arrived before each decode step, so a new request joins the running
batch at the next step instead of waiting for it to finish, and a cancelled one (its client went away) frees
its rows at the next step. When the engine is idle the thread blocks, and a first request waits up to
``wait_s`` for others to prefill with it (0 by default: none). The decoding is
:class:`tinystories.model.engine.Engine`'s.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from contextlib import AbstractContextManager, nullcontext

from tinystories.model.engine import Engine as DecodeEngine
from tinystories.model.engine import Job
from tinystories.model.generate import choose_token
from tinystories.model.gpt_neo import GPTNeo

log = logging.getLogger(__name__)


class Engine:
    def __init__(
        self,
        model: GPTNeo,
        eos: int,
        *,
        max_batch: int = 32,
        wait_s: float = 0.0,
        name: str = "model",
        autocast: AbstractContextManager = nullcontext(),  # noqa: B008 (stateless, shared safely)
    ):
        self.decoder = DecodeEngine(model, eos, choose_token, max_batch=max_batch)
        self.wait_s, self.autocast = wait_s, autocast
        self.context = self.decoder.context
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self._thread.start()

    @property
    def model(self) -> GPTNeo:
        return self.decoder.model

    @property
    def batches(self) -> deque[int]:
        """Rows per recent decode step (for tests and profiles)."""
        return self.decoder.batches

    @property
    def steps(self) -> int:
        return self.decoder.steps

    def submit(self, job: Job) -> None:
        job.submitted_step = self.decoder.steps
        self._queue.put(job)

    def close(self) -> None:
        """Finish the requests already submitted, then stop the thread."""
        self._queue.put(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        closing = False
        with self.autocast:  # entered in this thread: autocast state is per thread
            while not (closing and self.decoder.idle and self._queue.empty()):
                closing = self._take(block=self.decoder.idle and not closing) or closing
                if self.decoder.idle:
                    continue
                try:
                    self.decoder.step()
                except Exception:  # the engine failed the requests it ran; the server goes on
                    log.exception("a decode step failed")

    def _take(self, block: bool) -> bool:
        """Submit what has arrived to the decoder (waiting for a first job when ``block``); True once
        :meth:`close` was called."""
        closing, deadline = False, None
        while True:
            try:
                if block and deadline is None:
                    job = self._queue.get()
                    deadline = time.monotonic() + self.wait_s
                elif deadline is not None and self.wait_s > 0:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                else:
                    job = self._queue.get_nowait()
            except queue.Empty:
                return closing
            if job is None:
                closing, block, deadline = True, False, None
                continue
            try:
                self.decoder.submit(job)
            except ValueError as exc:  # the API checked the context already; refuse rather than stop the thread
                job.error = exc
                if job.done is not None:
                    job.done(job)
