"""An OpenAI-compatible HTTP server on 127.0.0.1 with fault injection: test a pipeline that calls an OpenAI-compatible
API (synthesis, an LLM judge, your own) offline, with the real ``openai`` client, as this project's tests and
benchmarks do.

    from tinystories.testing import Faults, OpenAIServer

    with OpenAIServer(faults=Faults(rate=0.3)) as server:
        client = AsyncOpenAI(base_url=server.url, api_key="test")

It serves ``POST /v1/chat/completions``, the Files endpoints (``POST /v1/files``, ``GET /v1/files/{id}``,
``GET /v1/files/{id}/content``) and the Batches endpoints (``POST /v1/batches``, ``GET /v1/batches/{id}``), with
the request and answer models of ``tinystories serve`` (:mod:`tinystories.serve.protocol`): a FastAPI app run by
uvicorn in a background thread, with keep-alive. It needs the ``serve`` extra (``pip install
"tinystories[serve]"``). ``python -m tinystories.testing --port-file F`` serves in a process of its own, so that a
client benchmark (``benchmarks/bench_synth.py``) has its process's CPU to itself.

What it answers is pluggable: ``answer(body) -> str | Answer`` gets the request body as parsed JSON. The default
writes a template story that uses the words the synthesis prompt asks for (and a one-sentence summary when asked
to summarize); evaluation tests plug in a function that answers like a judge.

Faults are injected on demand (:class:`Faults`): 429 with ``retry-after-ms`` and ``Retry-After``, 500, a stall
longer than the client's timeout, malformed JSON, ``finish_reason="length"`` and empty content; ``Faults.endpoint``
makes the whole server unusable (404 everywhere, HTML with status 200, never answering). A request is identified
by the ``X-Client-Request-Id`` header when sent (synthesis sends the story id), and every request is logged
(``log``, and one JSON line each in ``log_path``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinystories.jsonl import JsonlLog
from tinystories.llm.wire import loads
from tinystories.serve.protocol import (
    APIError,
    AssistantMessage,
    Batch,
    BatchCreateRequest,
    BatchInputLine,
    BatchOutputLine,
    BatchResponse,
    ChatChoice,
    ChatCompletion,
    ChatRequest,
    ErrorDetail,
    ErrorResponse,
    FileObject,
    Message,
    Usage,
    new_id,
    now,
    parse_request,
)
from tinystories.story_templates import generate_story
from tinystories.synth.prompts import SUMMARY_MARKER, parse_prompt

try:
    from fastapi import FastAPI, Request, Response

    from tinystories.serve.server import openai_app, serve_in_thread
except ModuleNotFoundError as exc:  # one line that names the extra, not a traceback into FastAPI
    if exc.name not in ("fastapi", "starlette", "uvicorn"):
        raise
    raise ModuleNotFoundError(
        f"the OpenAI-compatible test server needs FastAPI and uvicorn ({exc.name} is not installed): "
        'pip install "tinystories[serve]"',
        name=exc.name,
    ) from None

FAULT_KINDS = ("rate_limit", "server_error", "stall", "malformed", "length", "empty")
BROKEN_ENDPOINTS = {  # what a wrong --base-url answers to every request (None: never answers)
    "not_found": (404, b"<html><head><title>404 Not Found</title></head><body>nginx</body></html>"),
    "html": (200, b"<!DOCTYPE html><html><body><h1>Welcome to the router login page</h1></body></html>"),
    "hang": None,
}
MALFORMED = b'{"id": "chatcmpl-broken", "choices": [{"message": {"content": "Once'


@dataclass
class Answer:
    text: str
    finish_reason: str = "stop"


@dataclass
class Faults:
    """Which faults to inject. `rate` is the chance that one attempt at a request gets a fault; each
    request id gets at most `max_per_request` faults so a client with enough retries always finishes.
    Ids in `always_fail` get a 500 on every attempt (a request the client must record as failed)."""

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    max_per_request: int = 2
    retry_after_s: float = 0.05  # sent as retry-after-ms (OpenAI's header) and a rounded-up retry-after
    retry_after: str | None = None  # else sent as the only Retry-After, verbatim (a misbehaving server: "soon")
    stall_s: float = 5.0
    always_fail: frozenset[str] = frozenset()
    seed: int = 0
    endpoint: str | None = None  # a key of BROKEN_ENDPOINTS: every request gets that

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kind(s) {sorted(unknown)}; known: {FAULT_KINDS}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate must be in [0, 1], got {self.rate}")
        if self.endpoint is not None and self.endpoint not in BROKEN_ENDPOINTS:
            raise ValueError(f"unknown broken endpoint {self.endpoint!r}; known: {sorted(BROKEN_ENDPOINTS)}")


@dataclass
class LogEntry:
    path: str
    request_id: str | None
    outcome: str  # "ok" or a fault kind
    time: float


def default_answer(body: dict) -> Answer:
    """A template story honouring the synthesis prompt's words and features, or a one-sentence summary."""
    user = next((m for m in reversed(body.get("messages", [])) if m.get("role") == "user"), None)
    prompt = Message.model_validate(user).text if user is not None else ""  # a string or its text parts
    if SUMMARY_MARKER in prompt:
        story = prompt.split(SUMMARY_MARKER, 1)[1].strip()
        first = story.split(".")[0].strip() or "A child has a day"
        return Answer(f"{first} and learns something new.")
    words, features = parse_prompt(prompt)
    rng = random.Random(prompt)
    return Answer(generate_story(rng, words.get("verb"), words.get("noun"), words.get("adjective"), features))


def _count_tokens(text: str) -> int:
    return max(1, len(text) // 4)  # the usual 4-characters-per-token rule; exact counts do not matter here


def _json(answer: Any) -> Response:
    return Response(answer.model_dump_json(), media_type="application/json")


class OpenAIServer:
    """The server, run in a background thread (`start`/`stop` or a `with` block)."""

    def __init__(
        self,
        answer: Callable[[dict], str | Answer] = default_answer,
        faults: Faults | None = None,
        *,
        port: int = 0,
        batch_delay_s: float = 0.05,
        latency_s: float = 0.0,
        log_path: str | Path | None = None,
    ):
        self.answer = answer
        self.faults = faults or Faults()
        self.port = port
        self.batch_delay_s = batch_delay_s
        self.latency_s = latency_s  # added to every chat answer: a slow model, so tests can stop a run midway
        self.log: list[LogEntry] = []
        self._log_file = JsonlLog(log_path, fsync="never") if log_path else None
        self._attempts: collections.Counter[str] = collections.Counter()
        self._faults_given: collections.Counter[str] = collections.Counter()
        self._files: dict[str, tuple[FileObject, bytes]] = {}
        self._batches: dict[str, Batch] = {}
        self._batch_runs: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks
        self._app = self._create_app()
        self._running: contextlib.ExitStack | None = None
        # Set by the app's startup in the server's event loop: `_closing` cuts every wait short when it stops.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Event | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> OpenAIServer:
        running = contextlib.ExitStack()
        options: dict[str, Any] = {
            "interface": "asgi3",  # uvicorn cannot tell that a bound method is an ASGI 3 app
            "backlog": 4096,  # a benchmark opens hundreds of connections at once
            "timeout_keep_alive": 3600,  # idle connections stay open: a test never races a keep-alive timeout
            "timeout_graceful_shutdown": 5,  # `stop` ends the waits; this caps an `answer` that never returns
            "proxy_headers": False,  # no X-Forwarded-For to read on loopback
        }
        url = running.enter_context(serve_in_thread(self._asgi, port=self.port, **options))
        self.port = int(url.rsplit(":", 1)[1])
        self._running = running
        return self

    def stop(self) -> None:
        if self._running:
            if self._loop and self._closing:
                self._loop.call_soon_threadsafe(self._closing.set)
            self._running.close()
            self._running = None
        if self._log_file:
            self._log_file.close()

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def requested_ids(self, path: str = "/v1/chat/completions") -> list[str]:
        return [e.request_id for e in self.log if e.path == path and e.request_id is not None]

    @contextlib.asynccontextmanager
    async def _lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        self._loop, self._closing = asyncio.get_running_loop(), asyncio.Event()
        yield

    async def _pause(self, seconds: float | None) -> None:
        """Wait ``seconds`` (None: for ever), or until the server stops."""
        assert self._closing is not None  # set at startup, before the first request
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    # -- HTTP --------------------------------------------------------------------------------------
    def _create_app(self) -> FastAPI:
        app = openai_app("tinystories test server", lifespan=self._lifespan)
        app.add_api_route("/v1/chat/completions", self._chat, methods=["POST"])
        app.add_api_route("/v1/files", self._upload, methods=["POST"])
        app.add_api_route("/v1/files/{file_id}", self._get_file, methods=["GET"])
        app.add_api_route("/v1/files/{file_id}/content", self._get_file_content, methods=["GET"])
        app.add_api_route("/v1/batches", self._create_batch, methods=["POST"])
        app.add_api_route("/v1/batches/{batch_id}", self._get_batch, methods=["GET"])
        return app

    async def _asgi(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        """What uvicorn runs: the FastAPI app, once absolute-form targets are made origin-form and unless a broken
        endpoint answers every request."""
        if scope["type"] == "http":
            if "://" in scope["path"]:  # absolute-form, as a forward proxy sends it (RFC 9112 3.2.2)
                path = "/" + scope["path"].split("://", 1)[1].partition("/")[2]
                scope = {**scope, "path": path, "raw_path": path.encode()}
            if endpoint := self.faults.endpoint:
                request_id = dict(scope["headers"]).get(b"x-client-request-id")
                response = await self._broken(endpoint, scope["path"], request_id)
                await response(scope, receive, send)
                return
        await self._app(scope, receive, send)

    async def _broken(self, endpoint: str, path: str, request_id: bytes | None) -> Response:
        self._record(path, request_id.decode("latin-1") if request_id else None, endpoint)
        answer = BROKEN_ENDPOINTS[endpoint]
        if answer is None:  # accepted, never answered (until the server stops)
            await self._pause(None)
            return Response(status_code=503)
        return Response(answer[1], status_code=answer[0], media_type="text/html")

    def _record(self, path: str, request_id: str | None, outcome: str) -> None:
        entry = LogEntry(path, request_id, outcome, time.time())
        self.log.append(entry)
        if self._log_file:
            self._log_file.append(dataclasses.asdict(entry))

    def _pick_fault(self, request_id: str | None) -> str | None:
        key = request_id or f"anonymous-{len(self.log)}"
        self._attempts[key] += 1
        if request_id in self.faults.always_fail:
            return "server_error"
        if self.faults.rate <= 0 or self._faults_given[key] >= self.faults.max_per_request:
            return None
        rng = random.Random(f"{self.faults.seed}:{key}:{self._attempts[key]}")
        if rng.random() >= self.faults.rate:
            return None
        self._faults_given[key] += 1
        return rng.choice(self.faults.kinds)

    async def _chat(self, request: Request) -> Response:
        body = await request.body()  # before any wait: a client that timed out meanwhile has gone
        request_id = request.headers.get("x-client-request-id")
        fault = self._pick_fault(request_id)
        self._record("/v1/chat/completions", request_id, fault or "ok")
        if fault == "rate_limit":
            wait = self.faults.retry_after_s
            retry = {"retry-after-ms": str(int(wait * 1000)), "retry-after": str(max(1, round(wait + 0.5)))}
            if self.faults.retry_after is not None:
                retry = {"retry-after": self.faults.retry_after}
            raise APIError(429, "Rate limit reached (injected)", type="rate_limit_exceeded", headers=retry)
        if fault == "server_error":
            raise APIError(500, "The server had an error (injected)", type="server_error")
        if fault == "malformed":
            return Response(MALFORMED, media_type="application/json")
        if fault == "stall":
            await self._pause(self.faults.stall_s)
        elif self.latency_s:
            await self._pause(self.latency_s)
        parse_request(ChatRequest, body)  # a 400 for what OpenAI would refuse; `answer` gets the JSON as sent
        return _json(self.chat_completion(loads(body), fault))

    def chat_completion(self, request: dict, fault: str | None = None) -> ChatCompletion:
        """The chat completion for a request (also used for Batch lines)."""
        answer = self.answer(request)
        if isinstance(answer, str):
            answer = Answer(answer)
        text, finish_reason = answer.text, answer.finish_reason
        if fault == "length":
            text, finish_reason = text[: max(1, len(text) // 3)], "length"
        elif fault == "empty":
            text = ""
        prompt_tokens = sum(_count_tokens(str(m.get("content", ""))) for m in request.get("messages", []))
        return ChatCompletion(
            id=new_id("chatcmpl-"),
            model=request.get("model", "test-model"),
            choices=[ChatChoice(index=0, message=AssistantMessage(content=text), finish_reason=finish_reason)],
            usage=Usage.of(prompt_tokens, _count_tokens(text) if text else 0),
        )

    # -- Files and Batches -------------------------------------------------------------------------
    def _store_file(self, content: bytes, filename: str, purpose: str) -> FileObject:
        stored = FileObject(bytes=len(content), filename=filename, purpose=purpose)
        self._files[stored.id] = (stored, content)
        return stored

    def _stored(self, file_id: str) -> tuple[FileObject, bytes]:
        if file_id not in self._files:
            raise APIError(404, f"no file {file_id}")
        return self._files[file_id]

    async def _upload(self, request: Request) -> Response:
        try:
            fields = _parse_multipart(request.headers.get("content-type", ""), await request.body())
        except (ValueError, IndexError) as exc:
            raise APIError(400, f"bad multipart upload: {exc}") from None
        if "file" not in fields:
            raise APIError(400, "multipart upload without a 'file' field")
        filename, content = fields["file"]
        purpose = fields.get("purpose", (None, b"batch"))[1].decode()
        return _json(self._store_file(content, filename or "upload.jsonl", purpose))

    async def _get_file(self, file_id: str) -> Response:
        return _json(self._stored(file_id)[0])

    async def _get_file_content(self, file_id: str) -> Response:
        return Response(self._stored(file_id)[1], media_type="application/octet-stream")

    async def _get_batch(self, batch_id: str) -> Response:
        if batch_id not in self._batches:
            raise APIError(404, f"no batch {batch_id}")
        return _json(self._batches[batch_id])

    async def _create_batch(self, request: Request) -> Response:
        create = parse_request(BatchCreateRequest, await request.body())
        if create.input_file_id not in self._files:
            raise APIError(400, f"input_file_id {create.input_file_id} does not exist", param="input_file_id")
        batch = Batch(
            endpoint=create.endpoint,
            input_file_id=create.input_file_id,
            completion_window=create.completion_window,
            status="validating",
            expires_at=now() + 86400,
            metadata=create.metadata,
        )
        self._batches[batch.id] = batch
        run = asyncio.get_running_loop().create_task(self._run_batch(batch))
        self._batch_runs.add(run)
        run.add_done_callback(self._batch_runs.discard)
        return _json(batch)

    async def _run_batch(self, batch: Batch) -> None:
        await asyncio.sleep(self.batch_delay_s)
        lines = [line for line in self._files[batch.input_file_id][1].decode().splitlines() if line.strip()]
        batch.status, batch.in_progress_at, batch.request_counts.total = "in_progress", now(), len(lines)
        outputs, errors = [], []
        for line in lines:
            item = BatchInputLine.model_validate_json(line)
            fault = self._pick_fault(f"batch:{item.custom_id}")
            self._record("/v1/batches", item.custom_id, fault or "ok")
            if fault == "server_error":
                error = ErrorResponse(error=ErrorDetail(message="injected", type="server_error"))
                response = BatchResponse(status_code=500, request_id="", body=error)
                errors.append(BatchOutputLine(custom_id=item.custom_id, response=response))
                batch.request_counts.failed += 1
                continue
            body = self.chat_completion(item.body, fault if fault in ("length", "empty") else None)
            response = BatchResponse(status_code=200, request_id=new_id(""), body=body)
            outputs.append(BatchOutputLine(custom_id=item.custom_id, response=response))
            batch.request_counts.completed += 1
            await asyncio.sleep(0)
        await asyncio.sleep(self.batch_delay_s)
        batch.status, batch.finalizing_at = "finalizing", now()
        if outputs:  # batch output order is not input order
            content = b"".join(o.model_dump_json().encode() + b"\n" for o in reversed(outputs))
            batch.output_file_id = self._store_file(content, "batch_output.jsonl", "batch_output").id
        if errors:
            content = b"".join(e.model_dump_json().encode() + b"\n" for e in errors)
            batch.error_file_id = self._store_file(content, "batch_errors.jsonl", "batch_output").id
        batch.status, batch.completed_at = "completed", now()


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, content) of a multipart/form-data body (FastAPI's own form parsing needs another
    package, python-multipart)."""
    if "boundary=" not in content_type:
        raise ValueError(f"multipart body without a boundary (content-type {content_type!r})")
    boundary = b"--" + content_type.split("boundary=", 1)[1].split(";")[0].strip('"').encode()
    fields = {}
    for part in body.split(boundary)[1:]:
        if part.startswith(b"--"):
            break
        head, _, content = part.partition(b"\r\n\r\n")
        disposition = head.decode("utf-8", "replace")
        name = disposition.split('name="', 1)[1].split('"', 1)[0]
        filename = disposition.split('filename="', 1)[1].split('"', 1)[0] if 'filename="' in disposition else None
        fields[name] = (filename, content.removesuffix(b"\r\n"))
    return fields
