"""Running many requests: one event loop in this process, or worker processes that each run their own
event loop on a share of the requests (``ClientConfig.workers``), so the client scales with cores."""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from multiprocessing.connection import Connection

from tinystories.llm.client import ChatClient, ChatRequest, ChatResult, ClientConfig, RunStats, new_event_loop
from tinystories.llm.pricing import Budget
from tinystories.runtime.processes import die_with_parent


def run_chat(
    requests: Iterable[ChatRequest],
    config: ClientConfig,
    on_result: Callable[[ChatResult], None],
    *,
    already_spent_usd: float = 0.0,
) -> RunStats:
    """Make every request; `on_result` runs in the calling process/thread for each result, in completion
    order. With `config.workers > 1` the requests are dealt out to worker processes."""
    if config.workers <= 1:
        loop = new_event_loop()
        try:

            async def main() -> RunStats:
                async with ChatClient(config) as client:
                    return await client.run(requests, on_result, already_spent_usd=already_spent_usd)

            return loop.run_until_complete(main())
        finally:
            loop.close()
    return _run_in_workers(requests, config, on_result, already_spent_usd)


_CHUNK = 32  # requests per message to a worker: amortizes pickling and queue hops
_STOP, _END = "stop", None


def _run_in_workers(
    requests: Iterable[ChatRequest], config: ClientConfig, on_result: Callable[[ChatResult], None], spent: float
) -> RunStats:
    context = multiprocessing.get_context("spawn")  # no fork: the parent may hold threads and sockets
    per_worker = max(1, config.concurrency // config.workers)
    worker_config = dataclasses.replace(config, workers=1, concurrency=per_worker, max_cost_usd=None)
    results: multiprocessing.Queue = context.Queue()
    inboxes = [context.Queue() for _ in range(config.workers)]
    # Only this process holds the write end: when it dies, even by SIGKILL, every worker reads EOF and exits.
    parent_alive, parent_alive_writer = context.Pipe(duplex=False)
    processes = [
        context.Process(
            target=_worker_main, args=(w, worker_config, inbox, results, parent_alive, os.getpid()), daemon=True
        )
        for w, inbox in enumerate(inboxes)
    ]
    for p in processes:
        p.start()
    parent_alive.close()
    stats, started = RunStats(), time.perf_counter()
    budget = Budget(config.max_cost_usd, config.prices, spent)
    outstanding = [0] * config.workers
    chunks = _chunks(iter(requests), _CHUNK)
    feeding, told_to_finish = True, False
    finished: set[int] = set()  # workers that said they are done
    held: list[ChatRequest] = []  # requests taken from the iterator that the budget cannot start yet
    chunk: list[ChatRequest] | None  # declared: `held or next(chunks, None)` may be None
    try:
        while len(finished) < config.workers:
            for w in range(config.workers):  # keep every worker about 2x its concurrency ahead
                while feeding and outstanding[w] < 2 * per_worker:
                    chunk, held = held or next(chunks, None), []
                    if chunk is None:
                        feeding = False
                        break
                    fits = min(len(chunk), budget.affordable(chunk[0].body))
                    chunk, held = chunk[:fits], chunk[fits:]
                    if chunk:
                        inboxes[w].put(chunk)
                        outstanding[w] += len(chunk)
                        budget.start(len(chunk))
                    if held:  # over budget for now: wait for answers, which may cost less than reserved
                        if budget.in_flight == 0:
                            feeding, stats.stopped = False, "budget"
                        break
                if held:
                    break
            if not feeding and not told_to_finish:
                for inbox in inboxes:  # END: finish what you have; STOP: finish only what is in flight
                    inbox.put(_END if stats.stopped is None else _STOP)
                told_to_finish = True
            try:
                w, message = results.get(timeout=1.0)
            except queue.Empty:
                dead = [w for w, p in enumerate(processes) if w not in finished and not p.is_alive()]
                if dead:
                    raise RuntimeError(f"LLM client worker process {dead[0]} died") from None
                continue
            if isinstance(message, str):  # the worker is done: "done" or a fatal error
                finished.add(w)
                if message != "done" and stats.stopped is None:
                    stats.stopped, feeding = message, False
                    for inbox in inboxes:
                        inbox.put(_STOP)
                    told_to_finish = True
                continue
            for result in message:
                outstanding[w] -= 1
                budget.finish(result.cost_usd)
                stats.add(result)
                on_result(result)
    finally:
        for p in processes:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
        parent_alive_writer.close()
    stats.seconds = time.perf_counter() - started
    return stats


def _chunks(iterator: Iterator[ChatRequest], size: int) -> Iterator[list[ChatRequest]]:
    while True:
        chunk = [r for _, r in zip(range(size), iterator)]
        if not chunk:
            return
        yield chunk


def _exit_with_parent(parent_alive: Connection, parent_pid: int) -> None:
    """A worker must not outlive its parent (nobody would read its results, and it keeps the resource tracker
    alive): on Linux the kernel kills it when the parent dies (PR_SET_PDEATHSIG); everywhere, a thread waits
    for EOF on a pipe only the parent writes to."""
    die_with_parent(signal.SIGKILL, parent_pid)

    def watch() -> None:
        try:
            parent_alive.recv()  # the parent never sends: this returns only with EOF, when it is gone
        except (EOFError, OSError):
            pass
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker_main(
    worker_id: int,
    config: ClientConfig,
    inbox: multiprocessing.Queue,
    results: multiprocessing.Queue,
    parent_alive: Connection,
    parent_pid: int,
) -> None:
    """A worker process: its own event loop and client; results go back in small batches."""
    _exit_with_parent(parent_alive, parent_pid)
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    pending: asyncio.Queue = asyncio.Queue()
    stop_now = threading.Event()

    def read_inbox() -> None:  # blocking reads live in a thread so the event loop never waits on them
        while True:
            message = inbox.get()
            if message == _STOP:
                stop_now.set()
            loop.call_soon_threadsafe(pending.put_nowait, message)
            if message in (_STOP, _END):
                return

    async def requests_from_inbox() -> AsyncIterator[ChatRequest]:
        while True:
            message = await pending.get()
            if message in (_STOP, _END):
                return
            for request in message:
                if stop_now.is_set():
                    return
                yield request

    async def main() -> str:
        outbox: list[ChatResult] = []

        def collect(result: ChatResult) -> None:
            outbox.append(result)
            if len(outbox) >= _CHUNK:
                flush()

        def flush() -> None:
            if outbox:
                results.put((worker_id, list(outbox)))
                outbox.clear()

        async def flusher() -> None:  # small batches must not wait for a full one
            while True:
                await asyncio.sleep(0.02)
                flush()

        threading.Thread(target=read_inbox, daemon=True).start()
        ticker = asyncio.ensure_future(flusher())
        try:
            async with ChatClient(config) as client:
                stats = await client.run(requests_from_inbox(), collect)
        finally:
            ticker.cancel()
            flush()
        return stats.stopped or "done"

    results.put((worker_id, loop.run_until_complete(main())))
