"""The one OpenAI-compatible client layer: many chat requests in, one result per request out.

Used by synthesis (`tinystories synth`) and by evaluation (the judge). It talks to OpenAI or any
compatible server (vLLM, Ollama, llama.cpp) through the official `openai` package and adds what a
half-million-request job needs:

* a concurrency limit, and worker processes (`ClientConfig.workers`) that each run their own event
  loop on a share of the requests, so the client scales with cores;
* 429 handling that honours `retry-after-ms` / `Retry-After` and pauses the whole client, exponential
  backoff with jitter on 5xx, timeouts, connection errors and malformed responses, a bounded number of
  attempts, after which the failure is *returned* (as a `ChatResult` with `error`), never lost;
* a policy for truncated (`finish_reason="length"`) and empty answers: retried, every attempt logged;
* cost from token usage with an editable price table (`PriceTable`, JSON/TOML overrides) and a budget
  stop (`max_cost_usd`) that stops sending before the budget is spent, counting requests in flight.

Why it is faster than the obvious `await client.chat.completions.create(...)` loop (see
`benchmarks/bench_synth.py`): that loop spends most of its CPU in per-request SDK machinery and in the
HTTP connection pool, whose bookkeeping grows with the number of open connections. Here requests go
through the SDK's documented low-level `client.post(..., cast_to=httpx.Response)` with a pre-encoded
JSON body (no TypedDict transform, no pydantic model per response; answers are parsed with orjson when
available), and connections are spread over several small pools (one SDK client per `pool_size`
connections) so each pool's bookkeeping stays O(pool_size). SDK retries are off: retries happen here.

    config = ClientConfig(base_url="http://127.0.0.1:8000/v1", concurrency=128)
    requests = [ChatRequest(id=f"q{i}", body={"model": "gpt-4o-mini", "messages": [...]}) for i in ...]
    stats = run_chat(requests, config, on_result=lambda r: print(r.id, r.ok, r.text))
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import queue
import random
import ssl
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import orjson

    _loads = orjson.loads
    _dumps = orjson.dumps
except ImportError:  # pragma: no cover - orjson is optional
    _loads = json.loads

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


# --- prices -------------------------------------------------------------------------------------------

# USD per 1M tokens (input, output) at the standard tier, as published by OpenAI when this was written.
# Prices change: edit this table or pass a JSON/TOML file (`PriceTable.load`, `--prices FILE`).
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-3.5-turbo": (0.50, 1.50),
    "gpt-4": (30.00, 60.00),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
}
BATCH_DISCOUNT = 0.5  # the Batch API bills half the standard price


@dataclass
class PriceTable:
    """Model -> (input, output) USD per 1M tokens. A dated snapshot ("gpt-4o-mini-2024-07-18") uses the
    price of its longest listed prefix; a model with no price costs 0 and `has_price` says so."""

    prices: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    batch_discount: float = BATCH_DISCOUNT

    @classmethod
    def load(cls, path: str | Path, *, base: PriceTable | None = None) -> PriceTable:
        """Overrides from a JSON or TOML file: {"gpt-4o-mini": {"input": 0.15, "output": 0.6}, ...} and an
        optional top-level "batch_discount"."""
        path = Path(path)
        try:
            if path.suffix == ".toml":
                import tomllib

                data = tomllib.loads(path.read_text())
            else:
                data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read price table {path}: {e}") from e
        table = PriceTable(dict((base or cls()).prices), (base or cls()).batch_discount)
        for model, entry in data.items():
            if model == "batch_discount":
                table.batch_discount = float(entry)
                continue
            try:
                table.prices[model] = (float(entry["input"]), float(entry["output"]))
            except (TypeError, KeyError, ValueError) as e:
                raise ValueError(
                    f'price table {path}: model {model!r} needs {{"input": USD/1M, "output": USD/1M}}, got {entry!r}'
                ) from e
        return table

    def lookup(self, model: str) -> tuple[float, float] | None:
        if model in self.prices:
            return self.prices[model]
        prefixes = [m for m in self.prices if model.startswith(m + "-")]
        return self.prices[max(prefixes, key=len)] if prefixes else None

    def has_price(self, model: str) -> bool:
        return self.lookup(model) is not None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int, *, batch: bool = False) -> float:
        price = self.lookup(model)
        if price is None:
            return 0.0
        usd = (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6
        return usd * self.batch_discount if batch else usd


# --- requests and results -----------------------------------------------------------------------------


@dataclass
class ChatRequest:
    """One chat completion to make. `id` is the caller's key (sent as X-Client-Request-Id); `body` is the
    JSON body of POST /chat/completions (model, messages, max_tokens, temperature, ...)."""

    id: str
    body: dict[str, Any]


@dataclass
class ChatResult:
    id: str
    text: str | None = None
    finish_reason: str | None = None
    model: str | None = None
    usage: dict[str, int] = field(default_factory=dict)  # summed over every billed attempt
    cost_usd: float = 0.0  # summed over every billed attempt
    attempts: int = 0
    attempt_errors: list[str] = field(default_factory=list)  # one entry per failed attempt: "rate_limit", ...
    error: str | None = None  # None when the request succeeded

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ClientConfig:
    base_url: str | None = None  # None: OPENAI_BASE_URL or api.openai.com
    api_key: str | None = None  # None: read from the environment variable `api_key_env`
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 64  # requests in flight, over all workers
    workers: int = 1  # processes; >1 shards the requests over that many event loops
    pool_size: int = 8  # connections per HTTP pool (see the module docstring)
    timeout_s: float = 120.0
    max_attempts: int = 6
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    retry_truncated: bool = True  # finish_reason == "length": try again (else accept, flagged)
    retry_empty: bool = True
    max_cost_usd: float | None = None
    prices: PriceTable = field(default_factory=PriceTable)

    def __post_init__(self) -> None:
        for name in ("concurrency", "workers", "pool_size", "max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"ClientConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.timeout_s <= 0:
            raise ValueError(f"ClientConfig.timeout_s must be > 0, got {self.timeout_s}")

    def resolve_api_key(self) -> str:
        key = self.api_key or os.environ.get(self.api_key_env)
        if key:
            return key
        if self.base_url:  # local servers (vLLM, Ollama, llama.cpp) usually ignore the key
            return "unused"
        raise ValueError(f"no API key: set the environment variable {self.api_key_env} (or pass --api-key-env)")


@dataclass
class RunStats:
    succeeded: int = 0
    failed: int = 0
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    stopped: str | None = None  # why the run stopped early: "budget" or a fatal API error
    seconds: float = 0.0

    def add(self, result: ChatResult) -> None:
        self.succeeded += result.ok
        self.failed += not result.ok
        self.attempts += result.attempts
        self.prompt_tokens += result.usage.get("prompt_tokens", 0)
        self.completion_tokens += result.usage.get("completion_tokens", 0)
        self.cost_usd += result.cost_usd


class FatalAPIError(RuntimeError):
    """An error no retry can fix (bad key, exhausted quota, unknown model): the whole run stops."""


class _Budget:
    """Stops new requests once spent + (requests in flight x mean cost so far) would pass the limit."""

    def __init__(self, max_cost_usd: float | None, already_spent: float = 0.0):
        self.max = max_cost_usd
        self.spent = already_spent
        self.finished = 0
        self.in_flight = 0

    def allows_another(self) -> bool:
        if self.max is None:
            return True
        mean = self.spent / self.finished if self.finished else 0.0
        return self.spent + (self.in_flight + 1) * mean < self.max

    def start(self) -> None:
        self.in_flight += 1

    def finish(self, cost: float) -> None:
        self.in_flight -= 1
        self.finished += 1
        self.spent += cost


# --- the async client -----------------------------------------------------------------------------------


class ChatClient:
    """Async client for one event loop. `complete` makes one request with retries; `run` streams many."""

    def __init__(self, config: ClientConfig):
        import httpx2
        import openai

        self.config = config
        self._openai = openai
        self._httpx = httpx2
        n_pools = max(1, math.ceil(config.concurrency / config.pool_size))
        verify = ssl.create_default_context()  # one context: building one per pool costs ~50 ms each
        self._clients = [
            openai.AsyncOpenAI(
                base_url=config.base_url,
                api_key=config.resolve_api_key(),
                max_retries=0,
                timeout=config.timeout_s,
                http_client=httpx2.AsyncClient(
                    verify=verify,
                    timeout=config.timeout_s,
                    follow_redirects=True,
                    limits=httpx2.Limits(max_connections=config.pool_size, max_keepalive_connections=config.pool_size),
                ),
            )
            for _ in range(n_pools)
        ]
        self._next_pool = 0
        self._paused_until = 0.0  # set by a 429: every request waits, not just the one that was refused

    async def aclose(self) -> None:
        for client in self._clients:
            await client.close()

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _backoff(self, attempt: int) -> float:
        base = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** (attempt - 1))
        return base / 2 + random.uniform(0, base / 2)  # "equal jitter": never 0, never in lock-step

    async def complete(self, request: ChatRequest) -> ChatResult:
        """One request, retried per the policy; failures come back as a result with `error` set."""
        openai = self._openai
        cfg = self.config
        client = self._clients[self._next_pool]
        self._next_pool = (self._next_pool + 1) % len(self._clients)
        content = _dumps(request.body)
        headers = {"Content-Type": "application/json", "X-Client-Request-Id": request.id}
        model = request.body.get("model", "")
        result = ChatResult(id=request.id, model=model)
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for attempt in range(1, cfg.max_attempts + 1):
            wait = self._paused_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            result.attempts = attempt
            delay = None  # None: back off exponentially
            try:
                response = await client.post(
                    "/chat/completions", cast_to=self._httpx.Response, content=content, options={"headers": headers}
                )
                problem = self._read_answer(response.content, result, usage)
            except openai.RateLimitError as e:
                if _error_code(e) == "insufficient_quota":
                    raise FatalAPIError(f"the API refused: insufficient quota ({e})") from e
                problem, delay = "rate_limit", _retry_after(e.response.headers)
                if delay is not None:
                    self._paused_until = max(self._paused_until, time.monotonic() + delay)
            except openai.APIStatusError as e:
                if e.status_code in (401, 403):
                    raise FatalAPIError(f"the API refused the key ({e.status_code}): {e}") from e
                if e.status_code < 500 and e.status_code not in (408, 409):
                    result.error = f"http_{e.status_code}: {e}"  # a bad request stays bad: do not retry
                    break
                problem = f"http_{e.status_code}"
            except openai.APITimeoutError:
                problem = "timeout"
            except openai.APIConnectionError as e:
                problem = f"connection: {e.__cause__ or e}"
            if problem is None:
                result.error = None
                break
            result.attempt_errors.append(problem.split(":")[0])
            result.error = problem
            if attempt < cfg.max_attempts:
                # Retry-After is the server's word; a little jitter keeps refused requests from returning together
                await asyncio.sleep(self._backoff(attempt) if delay is None else delay * random.uniform(1.0, 1.2))
        result.usage = usage
        result.cost_usd = cfg.prices.cost(model, usage["prompt_tokens"], usage["completion_tokens"])
        return result

    def _read_answer(self, raw: bytes, result: ChatResult, usage: dict[str, int]) -> str | None:
        """Fill `result` from a 200 response; returns the problem when the answer is not usable."""
        try:
            data = _loads(raw)
            choice = data["choices"][0]
            text = choice["message"]["content"]
            finish_reason = choice.get("finish_reason")
        except (ValueError, KeyError, IndexError, TypeError):
            return "malformed"
        for key, value in (data.get("usage") or {}).items():
            if key in usage and isinstance(value, int):
                usage[key] += value  # billed even when the answer is unusable
        result.text, result.finish_reason = text, finish_reason
        result.model = data.get("model") or result.model
        if not isinstance(text, str) or not text.strip():
            return "empty" if self.config.retry_empty else None
        if finish_reason == "length" and self.config.retry_truncated:
            return "truncated"
        return None

    async def run(
        self,
        requests: Iterable[ChatRequest] | AsyncIterable[ChatRequest],
        on_result: Callable[[ChatResult], None],
        *,
        already_spent_usd: float = 0.0,
    ) -> RunStats:
        """Make all `requests` with `concurrency` in flight; `on_result` sees each result as it arrives."""
        stats, started = RunStats(), time.perf_counter()
        budget = _Budget(self.config.max_cost_usd, already_spent_usd)
        stop: list[str] = []
        if isinstance(requests, AsyncIterable):
            source, lock = aiter(requests), asyncio.Lock()

            async def next_request() -> ChatRequest | None:
                async with lock:  # an async generator cannot be advanced by two coroutines at once
                    return await anext(source, None)

        else:
            iterator = iter(requests)

            async def next_request() -> ChatRequest | None:
                return next(iterator, None)

        async def worker() -> None:
            while not stop:
                if not budget.allows_another():
                    stop.append("budget")
                    return
                request = await next_request()
                if request is None:
                    return
                budget.start()
                try:
                    result = await self.complete(request)
                except FatalAPIError as e:
                    stop.append(str(e))
                    return
                budget.finish(result.cost_usd)
                stats.add(result)
                on_result(result)

        await asyncio.gather(*(worker() for _ in range(self.config.concurrency)))
        stats.stopped = stop[0] if stop else None
        stats.seconds = time.perf_counter() - started
        return stats


def _error_code(error: Exception) -> str | None:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        return inner.get("code") if isinstance(inner, dict) else None
    return None


def _retry_after(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms` (OpenAI) or `Retry-After` (seconds or an HTTP date)."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            import email.utils

            when = email.utils.parsedate_to_datetime(value) if name == "retry-after" else None
            if when is not None:
                return max(0.0, when.timestamp() - time.time())
    return None


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (a faster event loop), else asyncio's."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


# --- running many requests, in one process or several ----------------------------------------------------


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
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no fork: the parent may hold threads and sockets
    per_worker = max(1, config.concurrency // config.workers)
    worker_config = _replace(config, workers=1, concurrency=per_worker, max_cost_usd=None)
    results: multiprocessing.Queue = context.Queue()
    inboxes = [context.Queue() for _ in range(config.workers)]
    processes = [
        context.Process(target=_worker_main, args=(w, worker_config, inbox, results), daemon=True)
        for w, inbox in enumerate(inboxes)
    ]
    for p in processes:
        p.start()
    stats, started = RunStats(), time.perf_counter()
    budget = _Budget(config.max_cost_usd, spent)
    outstanding = [0] * config.workers
    chunks = _chunks(iter(requests), _CHUNK)
    feeding, told_to_finish, running = True, False, config.workers
    try:
        while running:
            for w in range(config.workers):  # keep every worker about 2x its concurrency ahead
                while feeding and outstanding[w] < 2 * per_worker:
                    if not budget.allows_another():
                        feeding, stats.stopped = False, "budget"
                        break
                    chunk = next(chunks, None)
                    if chunk is None:
                        feeding = False
                        break
                    inboxes[w].put(chunk)
                    outstanding[w] += len(chunk)
                    budget.in_flight += len(chunk)
            if not feeding and not told_to_finish:
                for inbox in inboxes:  # END: finish what you have; STOP: finish only what is in flight
                    inbox.put(_END if stats.stopped is None else _STOP)
                told_to_finish = True
            try:
                w, message = results.get(timeout=1.0)
            except queue.Empty:
                if not all(p.is_alive() for p in processes):
                    raise RuntimeError("an LLM client worker process died") from None
                continue
            if isinstance(message, str):  # the worker is done: "done", "budget" or a fatal error
                running -= 1
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
    stats.seconds = time.perf_counter() - started
    return stats


def _replace(config: ClientConfig, **changes: Any) -> ClientConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


def _chunks(iterator: Iterator[ChatRequest], size: int) -> Iterator[list[ChatRequest]]:
    while True:
        chunk = [r for _, r in zip(range(size), iterator)]
        if not chunk:
            return
        yield chunk


def _worker_main(worker_id: int, config: ClientConfig, inbox: Any, results: Any) -> None:
    """A worker process: its own event loop and client; results go back in small batches."""
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
