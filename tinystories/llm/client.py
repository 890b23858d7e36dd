"""The OpenAI-compatible client: requests, results, the configuration, and the async client with its retry policy.

Used by synthesis (`tinystories synth`) and by evaluation (the judge). It talks to OpenAI or any
compatible server (vLLM, Ollama, llama.cpp) through the official `openai` package and adds what a
half-million-request job needs:

* a concurrency limit, and worker processes (`ClientConfig.workers`) that each run their own event
  loop on a share of the requests, so the client scales with cores;
* 429 handling that honours `retry-after-ms` / `Retry-After` and pauses the whole client, exponential
  backoff with jitter on 5xx, timeouts, connection errors and malformed responses, a bounded number of
  attempts, after which the failure is *returned* (as a `ChatResult` with `error`), never lost;
* a policy for truncated (`finish_reason="length"`) and empty answers: retried, every attempt logged;
* a circuit breaker (`CircuitBreaker`) that stops the run when the endpoint cannot work (refused
  connections, 404 everywhere, HTML or garbage with status 200, answers that never come), and a connect
  timeout apart from the answer's timeout;
* cost from token usage with an editable price table (`PriceTable`, JSON/TOML overrides) and a budget
  stop (`max_cost_usd`) that stops sending before the budget is spent, reserving for requests in flight.

Why it is faster than the obvious `await client.chat.completions.create(...)` loop (measured in
`benchmarks/bench_synth.py`): that loop spends its CPU in per-request SDK machinery (TypedDict
transforms of the params, a pydantic model per response) and in the HTTP stack under it, whose
connection pool rescans every open connection on each request. Here the SDK still builds, sends and
checks every request, but through its documented low-level `client.post(..., cast_to=httpx.Response)`
with a pre-encoded JSON body, answers are parsed with orjson (when installed), SDK retries are off
(retries happen here), and the SDK's httpx client runs on a lean HTTP/1.1 keep-alive transport
(`http_transport="keepalive"`, O(1) per request; `"httpx"` selects the stock transport, sharded into
small pools). Worker processes add cores.

    config = ClientConfig(base_url="http://127.0.0.1:8000/v1", concurrency=128)
    requests = [ChatRequest(id=f"q{i}", body={"model": "gpt-4o-mini", "messages": [...]}) for i in ...]
    stats = run_chat(requests, config, on_result=lambda r: print(r.id, r.ok, r.text))   # tinystories.llm.workers
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import ssl
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tinystories.llm.pricing import Budget, PriceTable
from tinystories.llm.wire import dumps, loads, retry_after_seconds
from tinystories.runtime.arguments import dataclass_options


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
    http_transport: str = "keepalive"  # "keepalive": our lean HTTP/1.1 transport; "httpx": the SDK's own
    pool_size: int = 8  # with http_transport="httpx": connections per pool (see the module docstring)
    timeout_s: float = 120.0  # for the answer (a long completion takes a while)
    connect_timeout_s: float = 10.0  # for the TCP/TLS connection: a dead host fails fast
    max_consecutive_failures: int = 10  # the circuit breaker's K (see CircuitBreaker); 0 turns it off
    max_attempts: int = 6
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    max_retry_after_s: float = 300.0  # the longest wait a 429's Retry-After is followed for
    retry_truncated: bool = True  # finish_reason == "length": try again (else accept, flagged)
    retry_empty: bool = True
    max_cost_usd: float | None = None
    prices: PriceTable = field(default_factory=PriceTable)

    def __post_init__(self) -> None:
        for name in ("concurrency", "workers", "pool_size", "max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"ClientConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.http_transport not in ("keepalive", "httpx"):
            raise ValueError(f"ClientConfig.http_transport must be 'keepalive' or 'httpx', got {self.http_transport!r}")
        for name in ("timeout_s", "connect_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ClientConfig.{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.max_retry_after_s < math.inf:
            raise ValueError(f"ClientConfig.max_retry_after_s must be finite and >= 0, got {self.max_retry_after_s}")
        if self.max_consecutive_failures < 0:
            raise ValueError(f"ClientConfig.max_consecutive_failures must be >= 0, got {self.max_consecutive_failures}")

    def resolve_api_key(self) -> str:
        key = self.api_key or os.environ.get(self.api_key_env)
        if key:
            return key
        if self.base_url:  # local servers (vLLM, Ollama, llama.cpp) usually ignore the key
            return "unused"
        raise ValueError(f"no API key: set the environment variable {self.api_key_env} (or pass --api-key-env)")


def client_config_from_args(args: argparse.Namespace) -> ClientConfig:
    """The ClientConfig of the options added by :func:`tinystories.runtime.arguments.add_llm_client_arguments`."""
    return ClientConfig(
        **{
            **dataclass_options(ClientConfig, args),
            "prices": PriceTable.load(args.prices) if args.prices else PriceTable(),
        }
    )


@dataclass
class RunStats:
    succeeded: int = 0
    failed: int = 0
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    stopped: str | None = None  # why the run stopped early: "budget", a fatal API error, or the circuit breaker
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


class CircuitBreaker:
    """Stops a run against an endpoint that cannot work instead of grinding every request into failures: it
    trips when the first K attempts of a run all failed (nothing was ever answered: a refused connection, 404
    everywhere, HTML with status 200, a server that accepts and never answers), or when K requests in a row
    failed after all their retries. A request's failed first attempt counts only once its retry failed too: a
    burst that fails every first attempt, when the retries succeed, is a transient fault, not an unusable endpoint. Rate
    limits, and chat completions that were empty or cut at max_tokens, never count against the endpoint: they
    say it works. ``limit`` 0 turns the breaker off."""

    def __init__(self, limit: int):
        self.limit = limit
        self.answered = False
        self.failed_attempts = self.failed_in_a_row = 0
        self.tripped: str | None = None  # why, naming the status and a sample of the answer

    @staticmethod
    def counts(problem: str | None) -> bool:
        """Whether a failed attempt counts against the endpoint (see the class docstring)."""
        return problem is not None and problem not in ("empty", "truncated", "rate_limit")

    def attempt(self, problem: str | None) -> None:
        if problem is None or problem in ("empty", "truncated"):
            self.answered = True
        elif not self.answered and self.counts(problem):
            self.failed_attempts += 1
            if self.failed_attempts == self.limit:
                self._trip(f"the first {self.limit} attempts all failed", problem)

    def result(self, result: ChatResult) -> None:
        self.failed_in_a_row = 0 if result.ok else self.failed_in_a_row + 1
        if self.limit and self.failed_in_a_row == self.limit:
            self._trip(f"{self.limit} requests in a row failed", result.error or "")

    def _trip(self, what: str, last: str) -> None:
        if self.tripped is None:
            self.tripped = (
                f"the endpoint looks unusable: {what} (the last: {last[:300]}); check --base-url and the server"
            )


class ChatClient:
    """Async client for one event loop. `complete` makes one request with retries; `run` streams many."""

    def __init__(self, config: ClientConfig):
        import httpx2
        import openai

        from tinystories.llm.transport import KeepAliveTransport, proxy_for

        self.config = config
        self._openai = openai
        self._httpx = httpx2
        verify = ssl.create_default_context()  # one context: building one per pool costs ~50 ms each
        url = config.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        if config.http_transport == "keepalive" and proxy_for(url) is None:
            pools: list[dict[str, Any]] = [dict(transport=KeepAliveTransport(verify))]  # httpx2.AsyncClient kwargs
        else:  # the SDK's own transport (it honours HTTPS_PROXY etc.), its pool bookkeeping kept small by sharding
            size = config.pool_size
            limits = httpx2.Limits(max_connections=size, max_keepalive_connections=size)
            pools = [dict(verify=verify, limits=limits)] * max(1, math.ceil(config.concurrency / size))
        timeout = httpx2.Timeout(config.timeout_s, connect=config.connect_timeout_s)
        self._clients = [
            openai.AsyncOpenAI(
                base_url=config.base_url,
                api_key=config.resolve_api_key(),
                max_retries=0,
                timeout=timeout,
                http_client=httpx2.AsyncClient(timeout=timeout, follow_redirects=True, **pool),
            )
            for pool in pools
        ]
        self._next_pool = 0
        self._slots = asyncio.Semaphore(config.concurrency)  # the limit also holds for direct `complete` calls
        self._paused_until = 0.0  # set by a 429: every request waits, not just the one that was refused
        self.breaker = CircuitBreaker(config.max_consecutive_failures)

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
        """One request, retried per the policy; failures come back as a result with `error` set.
        Raises `FatalAPIError` when no retry can help (bad key, exhausted quota)."""
        async with self._slots:
            return await self._complete(request)

    async def _complete(self, request: ChatRequest) -> ChatResult:
        openai = self._openai
        cfg = self.config
        client = self._clients[self._next_pool]
        self._next_pool = (self._next_pool + 1) % len(self._clients)
        content = dumps(request.body)
        headers = {"Content-Type": "application/json", "X-Client-Request-Id": request.id}
        model = request.body.get("model", "")
        result = ChatResult(id=request.id, model=model)
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        first_failure: str | None = None
        for attempt in range(1, cfg.max_attempts + 1):
            wait = self._paused_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            result.attempts = attempt
            delay, final = None, False  # None: back off exponentially; final: no retry can help
            try:
                response = await client.post(
                    "/chat/completions", cast_to=self._httpx.Response, content=content, options={"headers": headers}
                )
                problem = self._read_answer(response.content, result, usage)
            except openai.RateLimitError as e:
                if _error_code(e) == "insufficient_quota":
                    raise FatalAPIError(f"the API refused: insufficient quota ({e})") from e
                problem, delay = "rate_limit", retry_after_seconds(e.response.headers, cfg.max_retry_after_s)
                if delay is not None:
                    self._paused_until = max(self._paused_until, time.monotonic() + delay)
            except openai.APIStatusError as e:
                if e.status_code in (401, 403):
                    raise FatalAPIError(f"the API refused the key ({e.status_code}): {e}") from e
                problem = f"http_{e.status_code}: {e.response.text[:200]}"  # a sample of the body, for the record
                final = e.status_code < 500 and e.status_code not in (408, 409)  # a bad request stays bad
            except openai.APITimeoutError:
                problem = "timeout"
            except openai.APIConnectionError as e:
                problem = f"connection: {e.__cause__ or e}"
            if attempt == 1 and not final and attempt < cfg.max_attempts and self.breaker.counts(problem):
                first_failure = problem  # told to the breaker only if the retry fails too (class CircuitBreaker)
            else:
                if first_failure is not None and self.breaker.counts(problem):
                    self.breaker.attempt(first_failure)
                first_failure = None
                self.breaker.attempt(problem)
            if problem is None:
                result.error = None
                break
            result.attempt_errors.append(problem.split(":")[0])
            result.error = problem
            if final or self.breaker.tripped:
                break
            if attempt < cfg.max_attempts:
                # Retry-After is the server's word; a little jitter keeps refused requests from returning together
                await asyncio.sleep(self._backoff(attempt) if delay is None else delay * random.uniform(1.0, 1.2))
        result.usage = usage
        result.cost_usd = cfg.prices.cost(model, usage["prompt_tokens"], usage["completion_tokens"])
        return result

    def _read_answer(self, raw: bytes, result: ChatResult, usage: dict[str, int]) -> str | None:
        """Fill `result` from a 200 response; returns the problem when the answer is not usable."""
        try:
            data = loads(raw)
            choice = data["choices"][0]
            text = choice["message"]["content"]
            finish_reason = choice.get("finish_reason")
        except (ValueError, KeyError, IndexError, TypeError):
            return f"malformed: not a chat completion: {raw[:200]!r}"
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
        budget = Budget(self.config.max_cost_usd, self.config.prices, already_spent_usd)
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

        finished = asyncio.Condition()
        # Workers waiting for a request (a lazy source such as the judge's queue may not yield another until its
        # callers see this run end) or for budget to free up: a stop must wake them, or the run never returns.
        idle: set[asyncio.Task] = set()

        def halt(reason: str) -> None:
            if not stop:
                stop.append(reason)
            for task in idle:
                task.cancel()

        async def wait_idle(waiting: Awaitable[Any]) -> Any:
            task = asyncio.current_task()
            assert task is not None
            idle.add(task)
            try:
                return await waiting
            finally:
                idle.discard(task)

        async def wait_for_budget() -> None:
            async with finished:
                await finished.wait()

        async def worker() -> None:
            try:
                await work()
            except asyncio.CancelledError:
                if not stop:  # cancelled from outside: not ours to swallow
                    raise

        async def work() -> None:
            while not stop:
                request = await wait_idle(next_request())
                if request is None:
                    return
                while not stop and budget.affordable(request.body) < 1:
                    if budget.in_flight == 0:  # nothing will free budget: this request is dropped unsent
                        halt("budget")
                    else:  # requests in flight may cost less than reserved: wait for one to finish
                        await wait_idle(wait_for_budget())
                if stop:
                    return
                budget.start()
                try:
                    result = await self.complete(request)
                except FatalAPIError as e:
                    halt(str(e))
                    return
                budget.finish(result.cost_usd)
                stats.add(result)
                on_result(result)
                self.breaker.result(result)
                if self.breaker.tripped and not stop:
                    halt(self.breaker.tripped)
                if budget.max is not None:
                    async with finished:
                        finished.notify_all()

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


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (a faster event loop), else asyncio's."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()
