"""The HTTP app: OpenAI-compatible routes over the model pool, and the playground page.

    GET  /                      the playground (plain HTML + JavaScript, tinystories/assets/playground.html)
    GET  /v1/models             one model per checkpoint
    POST /v1/completions        prompt (or a list of prompts) -> story continuations
    POST /v1/chat/completions   Instruct models: the last user message in the Instruct layout
    GET  /playground/run/{id}   the model's loss curve, grades and probe results (JSON)

Every error is answered in the OpenAI error shape. With an API key, everything but ``/`` needs
``Authorization: Bearer KEY`` (the page asks for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel

from tinystories.model.engine import Job
from tinystories.model.generate import Row, prompt_ids
from tinystories.serve.api import (
    Choice,
    chunk_body,
    completion_body,
    instruct_prompt,
    random_seed,
    stops_of,
    usage,
)
from tinystories.serve.models import LoadedModel, ModelPool
from tinystories.serve.protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    Model,
    ModelList,
    new_id,
    parse_request,
)
from tinystories.serve.run_data import run_data
from tinystories.serve.server import openai_app

DEFAULT_MAX_TOKENS = 200
MAX_ROWS = 128  # stories per request


def create_app(
    pool: ModelPool, *, api_key: str | None = None, max_body_bytes: int = 1 << 20, eval_dirs: list[Path] | None = None
) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        pool.close()  # the server stopped: stop the models' engine threads

    app = openai_app("tinystories serve", lifespan=lifespan)

    if api_key:
        app.add_middleware(RequireKey, api_key=api_key)

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> str:
        return resources.files("tinystories").joinpath("assets/playground.html").read_text("utf-8")

    @app.get("/v1/models")
    async def list_models() -> ModelList:
        return ModelList(data=[e.describe() for e in pool.entries.values()])

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Model:
        return _entry(pool, model_id).describe()

    @app.get("/playground/run/{model_id:path}")
    async def run_info(model_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(run_data, _entry(pool, model_id), list(eval_dirs or []))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req = parse_request(CompletionRequest, await _read_body(request, max_body_bytes))
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise APIError(400, "prompt: an empty list", param="prompt")
        return await _generate("text", request, req, await _load(pool, req.model), prompts, req.max_tokens)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        req = parse_request(ChatRequest, await _read_body(request, max_body_bytes))
        loaded = await _load(pool, req.model)
        if not loaded.entry.instruct:
            raise APIError(
                400,
                f"model {req.model} is not an Instruct model (trained from an -instruct preset): "
                "use /v1/completions with a story beginning",
                param="model",
            )
        user = [m.text for m in req.messages if m.role == "user"]
        if not user:
            raise APIError(400, "messages: no user message", param="messages")
        prompt = instruct_prompt(user[-1])
        return await _generate("chat", request, req, loaded, [prompt], req.max_completion_tokens or req.max_tokens)

    return app


class RequireKey:
    """``Authorization: Bearer KEY`` on everything but ``/`` (401 otherwise). Plain ASGI: a ``@app.middleware``
    (Starlette's BaseHTTPMiddleware) wraps every request in a task group and memory streams, which cost more
    than the rest of a request's path (docs/serving.md)."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] != "/":
            given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
            if not hmac.compare_digest(given, self.expected):
                error = APIError(
                    401, "missing or incorrect API key (send Authorization: Bearer KEY)", code="invalid_api_key"
                )
                await JSONResponse(error.body(), status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _entry(pool: ModelPool, model_id: str) -> Any:
    if model_id not in pool.entries:
        raise APIError(
            404,
            f"the model {model_id!r} does not exist; GET /v1/models lists the served models",
            param="model",
            code="model_not_found",
        )
    return pool.entries[model_id]


async def _load(pool: ModelPool, model_id: str) -> LoadedModel:
    _entry(pool, model_id)
    try:
        return await pool.get(model_id)
    except (OSError, ValueError) as exc:
        raise APIError(500, f"model {model_id} could not be loaded: {exc}", type="server_error") from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body ({declared} bytes) is over the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"the request body is over the limit of {limit} bytes")
    return bytes(body)


async def _generate(
    kind: str, http: Request, req: Any, loaded: LoadedModel, prompts: list[str], max_tokens: int | None
) -> Any:
    tokenizer, context = loaded.tokenizer, loaded.context
    stops = stops_of(req)
    if len(prompts) * req.n > MAX_ROWS:
        raise APIError(400, f"{len(prompts)} prompts x n={req.n} is over {MAX_ROWS} stories per request", param="n")
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    longest = max(len(ids) for ids in encoded)
    if longest >= context:
        raise APIError(
            400,
            f"the prompt is {longest} tokens; {req.model} has a context of {context} tokens",
            param="prompt",
            code="context_length_exceeded",
        )
    if max_tokens is None:
        max_tokens = min(DEFAULT_MAX_TOKENS, context - longest)
    elif longest + max_tokens > context:
        raise APIError(
            400,
            f"{req.model} has a context of {context} tokens, but {longest} prompt tokens + "
            f"max_tokens {max_tokens} were requested",
            param="max_tokens",
            code="context_length_exceeded",
        )

    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def emit(index: int, delta: str, finish_reason: str | None) -> None:
        loop.call_soon_threadsafe(events.put_nowait, ("delta", index, delta, finish_reason))

    seed = req.seed if req.seed is not None else random_seed()
    device = loaded.engine.decoder.device
    choices, rows = [], []
    for p, ids in enumerate(encoded):
        for j in range(req.n):
            choice = Choice(p * req.n + j, tokenizer, stops, max_tokens, emit if req.stream else None)
            # Row r of a request seeded s draws from its own generator seeded s + r, as `tinystories sample`.
            generator = torch.Generator(device=device).manual_seed(seed + choice.index)
            rows.append(
                Row(
                    ids,
                    max_tokens,
                    req.temperature,
                    req.top_k,
                    req.top_p if req.top_p < 1 else None,
                    generator,
                    choice.on_token,
                )
            )
            choices.append(choice)

    def done(job: Job) -> None:  # in the engine thread, after the last token
        if job.error is None:
            for choice in choices:
                choice.finish()
        loop.call_soon_threadsafe(events.put_nowait, ("done", job.error))

    job = Job(rows, done)
    loaded.engine.submit(job)
    rid = new_id("chatcmpl-" if kind == "chat" else "cmpl-")
    prompt_tokens = sum(len(ids) for ids in encoded)
    watch = asyncio.create_task(_cancel_on_disconnect(http, job))  # cancelled with the answer
    if not req.stream:
        try:
            while (event := await events.get())[0] != "done":
                pass
        finally:  # answered, or this handler was cancelled: nothing more to generate
            watch.cancel()
            job.cancelled = True
        if event[1] is not None:
            raise APIError(500, f"generation failed: {event[1]}", type="server_error")
        return completion_body(kind, rid, req.model, choices, prompt_tokens)

    async def stream() -> AsyncIterator[str]:
        try:
            while (event := await events.get())[0] != "done":
                _, index, delta, finish_reason = event
                yield _sse(chunk_body(kind, rid, req.model, index, delta, finish_reason))
            if event[1] is not None:
                yield _sse(APIError(500, f"generation failed: {event[1]}", type="server_error").response())
            else:
                yield _sse(chunk_body(kind, rid, req.model, None, "", None, usage(prompt_tokens, choices)))
            yield "data: [DONE]\n\n"
        finally:  # the client went away (or the stream ended): its rows leave the batch at the next step
            job.cancelled = True
            watch.cancel()

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _cancel_on_disconnect(http: Request, job: Job) -> None:
    """Cancel ``job`` when the client disconnects before its answer (the body was read: what comes next is
    the disconnect)."""
    while (await http.receive())["type"] != "http.disconnect":
        pass
    job.cancelled = True


def _sse(event: BaseModel) -> str:
    return f"data: {event.model_dump_json()}\n\n"
