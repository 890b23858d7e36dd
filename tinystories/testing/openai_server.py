"""An OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks, with fault injection.

It speaks just enough of the API for the real `openai` client: `POST /v1/chat/completions`, the
Files endpoints (`POST /v1/files`, `GET /v1/files/{id}`, `GET /v1/files/{id}/content`) and the
Batches endpoints (`POST /v1/batches`, `GET /v1/batches/{id}`): a plain asyncio HTTP/1.1 server (keep-alive,
no dependencies), never the bottleneck of a client benchmark.

What it answers is pluggable: `answer(body) -> str | Answer` gets the parsed request body. The
default writes a template story that uses the words the synthesis prompt asks for (and a one-sentence
summary when asked to summarize); evaluation tests plug in a function that answers like a judge.

Faults are injected on demand (`Faults`): 429 with Retry-After, 500, a stall longer than the client's
timeout, malformed JSON, `finish_reason="length"` and empty content; `Faults.endpoint` makes the whole server
unusable (404 everywhere, HTML with status 200, never answering). A request is identified by the
`X-Client-Request-Id` header when sent (synthesis sends the story id), and every request is logged (`log`).

    with OpenAIServer(faults=Faults(rate=0.3)) as server:
        client = AsyncOpenAI(base_url=server.url, api_key="test")

``python -m tinystories.testing --port-file F`` serves in its own process (benchmarks).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tinystories.jsonl import JsonlLog
from tinystories.llm.wire import dumps, loads, read_chunked_body
from tinystories.story_templates import generate_story
from tinystories.synth.prompts import SUMMARY_MARKER, parse_prompt

FAULT_KINDS = ("rate_limit", "server_error", "stall", "malformed", "length", "empty")
_HTML = {"content-type": "text/html"}
BROKEN_ENDPOINTS = {  # what a wrong --base-url answers to every request (None: never answers)
    "not_found": (404, _HTML, b"<html><head><title>404 Not Found</title></head><body>nginx</body></html>"),
    "html": (200, _HTML, b"<!DOCTYPE html><html><body><h1>Welcome to the router login page</h1></body></html>"),
    "hang": None,
}


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
    prompt = next((m.get("content") for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
    if not isinstance(prompt, str):
        prompt = " ".join(part.get("text", "") for part in prompt if isinstance(part, dict))
    if SUMMARY_MARKER in prompt:
        story = prompt.split(SUMMARY_MARKER, 1)[1].strip()
        first = story.split(".")[0].strip() or "A child has a day"
        return Answer(f"{first} and learns something new.")
    words, features = parse_prompt(prompt)
    rng = random.Random(prompt)
    return Answer(generate_story(rng, words.get("verb"), words.get("noun"), words.get("adjective"), features))


def _count_tokens(text: str) -> int:
    return max(1, len(text) // 4)  # the usual 4-characters-per-token rule; exact counts do not matter here


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
        self._files: dict[str, tuple[dict, bytes]] = {}
        self._batches: dict[str, dict] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._ready = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> OpenAIServer:
        self._thread = threading.Thread(target=self._run_thread, name="openai-test-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the test OpenAI server did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._loop and self._thread and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if self._log_file:
            self._log_file.close()

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run_thread(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self.serve())
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _shutdown(self) -> None:
        if self._server:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def serve(self) -> None:
        """Start listening on the current event loop (sets `port`)."""
        self._server = await asyncio.start_server(self._handle_connection, "127.0.0.1", self.port, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]

    def requested_ids(self, path: str = "/v1/chat/completions") -> list[str]:
        return [e.request_id for e in self.log if e.path == path and e.request_id is not None]

    # -- HTTP --------------------------------------------------------------------------------------
    async def _handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                if "chunked" in headers.get("transfer-encoding", ""):
                    body = await read_chunked_body(reader)
                else:
                    body = await reader.readexactly(int(headers.get("content-length", 0) or 0))
                if "://" in target:  # absolute-form, as a forward proxy sends it (RFC 9112 3.2.2)
                    target = "/" + target.split("://", 1)[1].partition("/")[2]
                status, extra_headers, payload = await self._dispatch(method, target.split("?")[0], headers, body)
                writer.write(_response(status, extra_headers, payload))
                if headers.get("connection", "").lower() == "close":
                    await writer.drain()
                    return
                if writer.transport.get_write_buffer_size() > 65536:
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    async def _dispatch(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        if self.faults.endpoint:
            self._record(path, headers.get("x-client-request-id"), self.faults.endpoint)
            while BROKEN_ENDPOINTS[self.faults.endpoint] is None:
                await asyncio.sleep(3600)  # accepted, never answered
            return BROKEN_ENDPOINTS[self.faults.endpoint]
        try:
            if method == "POST" and path == "/v1/chat/completions":
                return await self._chat(headers, body)
            if method == "POST" and path == "/v1/files":
                return self._upload(headers, body)
            if method == "GET" and path.startswith("/v1/files/"):
                return self._get_file(path.removeprefix("/v1/files/"))
            if method == "POST" and path == "/v1/batches":
                return self._create_batch(loads(body))
            if method == "GET" and path.startswith("/v1/batches/"):
                batch = self._batches.get(path.removeprefix("/v1/batches/"))
                return (200, {}, dumps(batch)) if batch else _error(404, f"no batch {path}")
            return _error(404, f"{method} {path} is not served by the test server")
        except (ValueError, KeyError) as e:
            return _error(400, f"bad request: {e}")

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

    async def _chat(self, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        request_id = headers.get("x-client-request-id")
        fault = self._pick_fault(request_id)
        self._record("/v1/chat/completions", request_id, fault or "ok")
        if fault == "rate_limit":
            wait = self.faults.retry_after_s
            retry = {"retry-after-ms": str(int(wait * 1000)), "retry-after": str(max(1, round(wait + 0.5)))}
            return _error(429, "Rate limit reached (injected)", retry)
        if fault == "server_error":
            return _error(500, "The server had an error (injected)")
        if fault == "malformed":
            return 200, {}, b'{"id": "chatcmpl-broken", "choices": [{"message": {"content": "Once'
        if fault == "stall":
            await asyncio.sleep(self.faults.stall_s)
        elif self.latency_s:
            await asyncio.sleep(self.latency_s)
        request = loads(body)
        if not request.get("model") or not isinstance(request.get("messages"), list):
            return _error(400, "'model' and 'messages' are required")
        return 200, {}, dumps(self.chat_completion(request, fault))

    def chat_completion(self, request: dict, fault: str | None = None) -> dict:
        """The chat.completion object for a request (also used for Batch lines)."""
        answer = self.answer(request)
        if isinstance(answer, str):
            answer = Answer(answer)
        text, finish_reason = answer.text, answer.finish_reason
        if fault == "length":
            text, finish_reason = text[: max(1, len(text) // 3)], "length"
        elif fault == "empty":
            text = ""
        prompt_tokens = sum(_count_tokens(str(m.get("content", ""))) for m in request.get("messages", []))
        completion_tokens = _count_tokens(text) if text else 0
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", "test-model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "finish_reason": finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    # -- Files and Batches -------------------------------------------------------------------------
    def _store_file(self, content: bytes, filename: str, purpose: str) -> dict:
        obj = {
            "id": f"file-{uuid.uuid4().hex[:24]}",
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        self._files[obj["id"]] = (obj, content)
        return obj

    def _upload(self, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        fields = _parse_multipart(headers.get("content-type", ""), body)
        if "file" not in fields:
            return _error(400, "multipart upload without a 'file' field")
        filename, content = fields["file"]
        purpose = fields.get("purpose", ("", b"batch"))[1].decode()
        return 200, {}, dumps(self._store_file(content, filename or "upload.jsonl", purpose))

    def _get_file(self, rest: str) -> tuple[int, dict, bytes]:
        file_id, _, suffix = rest.partition("/")
        if file_id not in self._files:
            return _error(404, f"no file {file_id}")
        obj, content = self._files[file_id]
        if suffix == "content":
            return 200, {"content-type": "application/octet-stream"}, content
        return 200, {}, dumps(obj)

    def _create_batch(self, request: dict) -> tuple[int, dict, bytes]:
        input_file_id = request["input_file_id"]
        if input_file_id not in self._files:
            return _error(400, f"input_file_id {input_file_id} does not exist")
        now = int(time.time())
        batch = {
            "id": f"batch_{uuid.uuid4().hex[:24]}",
            "object": "batch",
            "endpoint": request.get("endpoint", "/v1/chat/completions"),
            "input_file_id": input_file_id,
            "completion_window": request.get("completion_window", "24h"),
            "status": "validating",
            "created_at": now,
            "expires_at": now + 86400,
            "output_file_id": None,
            "error_file_id": None,
            "metadata": request.get("metadata"),
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
        }
        self._batches[batch["id"]] = batch
        asyncio.get_running_loop().create_task(self._run_batch(batch))
        return 200, {}, dumps(batch)

    async def _run_batch(self, batch: dict) -> None:
        await asyncio.sleep(self.batch_delay_s)
        lines = self._files[batch["input_file_id"]][1].decode().splitlines()
        batch.update(status="in_progress", in_progress_at=int(time.time()))
        batch["request_counts"]["total"] = len(lines)
        outputs, errors = [], []
        for line in lines:
            if not line.strip():
                continue
            item = loads(line)
            custom_id = item["custom_id"]
            fault = self._pick_fault(f"batch:{custom_id}")
            self._record("/v1/batches", custom_id, fault or "ok")
            if fault == "server_error":
                errors.append(
                    {
                        "id": f"batch_req_{uuid.uuid4().hex[:16]}",
                        "custom_id": custom_id,
                        "error": None,
                        "response": {
                            "status_code": 500,
                            "request_id": "",
                            "body": {"error": {"message": "injected", "type": "server_error"}},
                        },
                    }
                )
                batch["request_counts"]["failed"] += 1
                continue
            body = self.chat_completion(item["body"], fault if fault in ("length", "empty") else None)
            outputs.append(
                {
                    "id": f"batch_req_{uuid.uuid4().hex[:16]}",
                    "custom_id": custom_id,
                    "error": None,
                    "response": {"status_code": 200, "request_id": uuid.uuid4().hex, "body": body},
                }
            )
            batch["request_counts"]["completed"] += 1
            await asyncio.sleep(0)
        await asyncio.sleep(self.batch_delay_s)
        batch.update(status="finalizing", finalizing_at=int(time.time()))
        if outputs:
            content = b"".join(dumps(o) + b"\n" for o in reversed(outputs))  # batch output order is not input order
            batch["output_file_id"] = self._store_file(content, "batch_output.jsonl", "batch_output")["id"]
        if errors:
            content = b"".join(dumps(e) + b"\n" for e in errors)
            batch["error_file_id"] = self._store_file(content, "batch_errors.jsonl", "batch_output")["id"]
        batch.update(status="completed", completed_at=int(time.time()))


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error"}


def _response(status: int, headers: dict, payload: bytes) -> bytes:
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"content-length: {len(payload)}"]
    if "content-type" not in headers:
        head.append("content-type: application/json")
    head.extend(f"{k}: {v}" for k, v in headers.items())
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload


def _error(status: int, message: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    kind = {429: "rate_limit_exceeded", 500: "server_error"}.get(status, "invalid_request_error")
    return status, headers or {}, dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, content) of a multipart/form-data body."""
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
