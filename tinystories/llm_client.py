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
    http_transport: str = "keepalive"  # "keepalive": our lean HTTP/1.1 transport; "httpx": the SDK's own
    pool_size: int = 8  # with http_transport="httpx": connections per pool (see the module docstring)
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
        if self.http_transport not in ("keepalive", "httpx"):
            raise ValueError(f"ClientConfig.http_transport must be 'keepalive' or 'httpx', got {self.http_transport!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"ClientConfig.timeout_s must be > 0, got {self.timeout_s}")

    def resolve_api_key(self) -> str:
        key = self.api_key or os.environ.get(self.api_key_env)
        if key:
            return key
        if self.base_url:  # local servers (vLLM, Ollama, llama.cpp) usually ignore the key
            return "unused"
        raise ValueError(f"no API key: set the environment variable {self.api_key_env} (or pass --api-key-env)")


def add_client_arguments(parser: Any, *, concurrency: int = 64, cost_help: str = "stop cleanly before spending more "
                         "than this") -> None:
    """The command-line options of the client, shared by every command that talks to an LLM."""
    parser.add_argument("--base-url", help="any OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (default: OpenAI)")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    parser.add_argument("--concurrency", type=int, default=concurrency, help="requests in flight")
    parser.add_argument("--workers", type=int, default=1, help="client processes (scale with cores)")
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--max-attempts", type=int, default=6)
    parser.add_argument("--backoff-s", type=float, default=1.0, help="first retry delay (doubles each retry)")
    parser.add_argument("--backoff-max-s", type=float, default=60.0)
    parser.add_argument("--max-cost-usd", type=float, help=cost_help)
    parser.add_argument("--prices", type=Path, help="JSON/TOML price overrides (USD per 1M tokens)")


def client_config_from_args(args: Any) -> ClientConfig:
    """The ClientConfig of the options added by :func:`add_client_arguments`."""
    return ClientConfig(
        base_url=args.base_url,
        api_key_env=args.api_key_env,
        concurrency=args.concurrency,
        workers=args.workers,
        timeout_s=args.timeout_s,
        max_attempts=args.max_attempts,
        backoff_initial_s=args.backoff_s,
        backoff_max_s=args.backoff_max_s,
        max_cost_usd=args.max_cost_usd,
        prices=PriceTable.load(args.prices) if args.prices else PriceTable(),
    )


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
    """Admits a request only while spent + (requests in flight + 1) x reserve stays within the limit. The reserve
    is the dearest request so far, or before any has finished an upper bound from the request itself
    (its prompt and max_tokens): the budget holds unless a request costs more than every one before it."""

    def __init__(self, max_cost_usd: float | None, prices: PriceTable, already_spent: float = 0.0):
        self.max = max_cost_usd
        self.prices = prices
        self.spent = already_spent
        self.dearest = 0.0
        self.in_flight = 0

    def affordable(self, request: ChatRequest) -> int:
        """How many more requests like `request` may start now."""
        if self.max is None:
            return 1 << 30
        reserve = self.dearest or self.upper_bound(request)
        if reserve <= 0:
            return 1 << 30
        return max(0, math.floor((self.max - self.spent) / reserve) - self.in_flight)

    def upper_bound(self, request: ChatRequest) -> float:
        body = request.body
        prompt_tokens = len(json.dumps(body.get("messages", ""))) // 2  # >= real tokens for any text
        completion_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 4096
        return self.prices.cost(body.get("model", ""), prompt_tokens, completion_tokens)

    def start(self, count: int = 1) -> None:
        self.in_flight += count

    def finish(self, cost: float) -> None:
        self.in_flight -= 1
        self.spent += cost
        self.dearest = max(self.dearest, cost)


# --- a lean HTTP/1.1 transport for the SDK -----------------------------------------------------------------


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


def _make_transport(httpx2: Any, ssl_context: ssl.SSLContext) -> Any:
    """An `httpx.AsyncBaseTransport` doing plain HTTP/1.1 keep-alive over asyncio streams.

    The SDK still builds every request and handles every response (auth, headers, status errors); only
    the wire work is ours: one request per connection at a time, idle connections reused LIFO, O(1) per
    request (the stock pool rescans all connections on every request). Chunked and Content-Length
    bodies, TLS for https, httpx's timeouts and exceptions. Content-Encoding is decoded by httpx."""

    class KeepAliveTransport(httpx2.AsyncBaseTransport):
        def __init__(self) -> None:
            self._idle: dict[tuple[str, str, int], list[_Connection]] = {}

        async def handle_async_request(self, request: Any) -> Any:
            url = request.url
            tls = url.scheme == "https"
            origin = (url.scheme, url.host, url.port or (443 if tls else 80))
            timeouts = request.extensions.get("timeout", {})
            body = await request.aread()
            head = [f"{request.method} {url.raw_path.decode('ascii')} HTTP/1.1".encode("ascii")]
            head.extend(name + b": " + value for name, value in request.headers.raw)
            if "host" not in request.headers:
                head.append(b"Host: " + url.netloc)
            if body and "content-length" not in request.headers:
                head.append(b"Content-Length: " + str(len(body)).encode())
            payload = b"\r\n".join(head) + b"\r\n\r\n" + body
            idle = self._idle.setdefault(origin, [])
            while idle:
                connection = idle.pop()
                if not connection.usable():
                    connection.close()
                    continue
                try:  # a kept-alive connection the server closed meanwhile fails before any answer: retry
                    return await self._exchange(connection, payload, request, timeouts, origin)
                except _StaleConnection:
                    continue
            connection = await self._connect(origin, tls, timeouts.get("connect"))
            try:
                return await self._exchange(connection, payload, request, timeouts, origin)
            except _StaleConnection as e:
                raise httpx2.RemoteProtocolError(
                    "server closed the connection without answering", request=request
                ) from e

        async def _connect(self, origin: tuple[str, str, int], tls: bool, timeout: float | None) -> _Connection:
            _, host, port = origin
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        host,
                        port,
                        ssl=ssl_context if tls else None,
                        server_hostname=host if tls else None,
                        limit=1 << 20,
                    ),
                    timeout,
                )
            except asyncio.TimeoutError as e:
                raise httpx2.ConnectTimeout(f"connecting to {host}:{port} timed out") from e
            except OSError as e:
                raise httpx2.ConnectError(f"cannot connect to {host}:{port}: {e}") from e
            return _Connection(reader, writer)

        async def _exchange(
            self, connection: _Connection, payload: bytes, request: Any, timeouts: dict, origin: tuple[str, str, int]
        ) -> Any:
            reader = connection.reader
            try:
                connection.writer.write(payload)
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeouts.get("read"))
                except asyncio.IncompleteReadError as e:
                    if not e.partial:
                        raise _StaleConnection() from e
                    raise
                lines = head[:-4].split(b"\r\n")
                status = int(lines[0].split(b" ", 2)[1])
                headers = [tuple(line.split(b":", 1)) for line in lines[1:] if b":" in line]
                headers = [(k.strip(), v.strip()) for k, v in headers]
                fields = {k.lower(): v for k, v in headers}
                if request.method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                    content = b""
                elif b"chunked" in fields.get(b"transfer-encoding", b"").lower():
                    content = await asyncio.wait_for(_read_chunked_body(reader), timeouts.get("read"))
                elif b"content-length" in fields:
                    content = await asyncio.wait_for(
                        reader.readexactly(int(fields[b"content-length"])), timeouts.get("read")
                    )
                else:
                    content = await asyncio.wait_for(reader.read(), timeouts.get("read"))
                    fields[b"connection"] = b"close"
            except asyncio.TimeoutError as e:
                connection.close()
                raise httpx2.ReadTimeout("timed out waiting for the response", request=request) from e
            except _StaleConnection:
                connection.close()
                raise
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as e:
                connection.close()
                raise httpx2.ReadError(f"reading the response failed: {e!r}", request=request) from e
            except BaseException:  # cancelled mid-answer: the connection is in an unknown state
                connection.close()
                raise
            if fields.get(b"connection", b"").lower() == b"close":
                connection.close()
            else:
                self._idle.setdefault(origin, []).append(connection)
            return httpx2.Response(
                status, headers=headers, stream=httpx2.ByteStream(content), extensions={"http_version": b"HTTP/1.1"}
            )

        async def aclose(self) -> None:
            for connections in self._idle.values():
                for connection in connections:
                    connection.close()
            self._idle.clear()

    return KeepAliveTransport()


class _StaleConnection(Exception):
    """A reused keep-alive connection was closed by the server before it answered."""


async def _read_chunked_body(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


# --- the async client -----------------------------------------------------------------------------------


class ChatClient:
    """Async client for one event loop. `complete` makes one request with retries; `run` streams many."""

    def __init__(self, config: ClientConfig):
        import httpx2
        import openai

        self.config = config
        self._openai = openai
        self._httpx = httpx2
        verify = ssl.create_default_context()  # one context: building one per pool costs ~50 ms each
        if config.http_transport == "keepalive":
            pools = [dict(transport=_make_transport(httpx2, verify))]
        else:  # the SDK's own transport, its pool bookkeeping kept small by sharding
            size = config.pool_size
            limits = httpx2.Limits(max_connections=size, max_keepalive_connections=size)
            pools = [dict(verify=verify, limits=limits)] * max(1, math.ceil(config.concurrency / size))
        self._clients = [
            openai.AsyncOpenAI(
                base_url=config.base_url,
                api_key=config.resolve_api_key(),
                max_retries=0,
                timeout=config.timeout_s,
                http_client=httpx2.AsyncClient(timeout=config.timeout_s, follow_redirects=True, **pool),
            )
            for pool in pools
        ]
        self._next_pool = 0
        self._slots = asyncio.Semaphore(config.concurrency)  # the limit also holds for direct `complete` calls
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
        """One request, retried per the policy; failures come back as a result with `error` set.
        Raises `FatalAPIError` when no retry can help (bad key, exhausted quota)."""
        async with self._slots:
            return await self._complete(request)

    async def _complete(self, request: ChatRequest) -> ChatResult:
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
        budget = _Budget(self.config.max_cost_usd, self.config.prices, already_spent_usd)
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

        async def worker() -> None:
            while not stop:
                request = await next_request()
                if request is None:
                    return
                while not stop and budget.affordable(request) < 1:
                    if budget.in_flight == 0:  # nothing will free budget: this request is dropped unsent
                        stop.append("budget")
                    else:  # requests in flight may cost less than reserved: wait for one to finish
                        async with finished:
                            await finished.wait()
                if stop:
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
    budget = _Budget(config.max_cost_usd, config.prices, spent)
    outstanding = [0] * config.workers
    chunks = _chunks(iter(requests), _CHUNK)
    feeding, told_to_finish, finished = True, False, set()
    held: list[ChatRequest] = []  # requests taken from the iterator that the budget cannot start yet
    try:
        while len(finished) < config.workers:
            for w in range(config.workers):  # keep every worker about 2x its concurrency ahead
                while feeding and outstanding[w] < 2 * per_worker:
                    chunk, held = held or next(chunks, None), []
                    if chunk is None:
                        feeding = False
                        break
                    fits = min(len(chunk), budget.affordable(chunk[0]))
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
