"""One loaded model's engine behind a thread: the requests of every HTTP client join one continuous batch.

Jobs (a :class:`~tinystories.model.engine.Job` = the rows of one HTTP request) are queued from the
event loop; the thread takes whatever has arrived before each decode step, so a new request joins the running
batch at the next step instead of waiting for it to finish, and a cancelled one (its client went away) frees
its rows at the next step. When the engine is idle the thread blocks, and a first request waits up to
``wait_s`` for others to prefill with it (0 by default: none). The decoding is
:class:`tinystories.model.engine.Engine`'s.

What the requests hear back (streamed text, the end of a job) goes through :meth:`Engine.post`: from the engine
thread it is delivered once per step, every request's news in one wake-up of the event loop, instead of one
cross-thread call per token per request.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from tinystories.model.engine import Engine as DecodeEngine
from tinystories.model.engine import Job
from tinystories.model.generate import choose_tokens
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
        self.decoder = DecodeEngine(model, eos, choose_tokens, max_batch=max_batch)
        self.wait_s, self.autocast = wait_s, autocast
        self.context = self.decoder.context
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._posted: deque[tuple[asyncio.AbstractEventLoop, Callable[..., Any], tuple[Any, ...]]] = deque()
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

    def post(self, loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on ``loop``: from the engine thread (a row's token, a job's end) after the
        current step, with everything else posted during it, in order; from any other thread at once."""
        if threading.current_thread() is not self._thread:
            loop.call_soon_threadsafe(callback, *args)
        else:
            self._posted.append((loop, callback, args))

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
                if not self.decoder.idle:
                    try:
                        self.decoder.step()
                    except Exception:  # the engine failed the requests it ran; the server goes on
                        log.exception("a decode step failed")
                self._deliver()

    def _deliver(self) -> None:
        """What the last step posted, one ``call_soon_threadsafe`` per event loop."""
        calls: dict[asyncio.AbstractEventLoop, list[tuple[Callable[..., Any], tuple[Any, ...]]]] = {}
        while self._posted:
            loop, callback, args = self._posted.popleft()
            calls.setdefault(loop, []).append((callback, args))
        for loop, batch in calls.items():
            try:
                loop.call_soon_threadsafe(_run_all, batch)
            except RuntimeError:  # the loop closed (the server is shutting down): nobody is listening
                pass

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


def _run_all(calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
    for callback, args in calls:
        callback(*args)
