"""The HTTP app: OpenAI-compatible routes over the model pool, and the playground page.

    GET  /                      the playground (plain HTML + JavaScript, tinystories/assets/playground.html)
    GET  /v1/models             one model per checkpoint
    POST /v1/completions        prompt(s), as text or token ids -> story continuations (echo, logprobs, best_of...)
    POST /v1/chat/completions   Instruct models: the system and user messages' lines in the Instruct layout
    GET  /health                200 when the server runs (vLLM's)
    POST /tokenize, /detokenize vLLM's shapes; GET /tokenizer_info as lm-eval's remote tokenizer reads it
    GET  /playground/run/{id}   the model's loss curve, grades and probe results (JSON)

Every error is answered in the OpenAI error shape; a field the server does not honour is a 400 naming it.
With an API key, everything but ``/`` needs ``Authorization: Bearer KEY`` (the page asks for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel

from tinystories.model.generate import prompt_ids
from tinystories.serve.api import chat_instruction
from tinystories.serve.completions import Prompt, complete, text_prompts
from tinystories.serve.models import LoadedModel, ModelPool
from tinystories.serve.protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    Model,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
    parse_request,
    unknown_fields,
)
from tinystories.serve.run_data import run_data
from tinystories.serve.server import openai_app

T = TypeVar("T", bound=BaseModel)


def create_app(
    pool: ModelPool,
    *,
    api_key: str | None = None,
    max_body_bytes: int = 1 << 20,
    eval_dirs: list[Path] | None = None,
    bind_host: str | None = None,
) -> FastAPI:
    """The app; ``bind_host`` is the address the server listens on (on loopback, only loopback host names)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        pool.close()  # the server stopped: stop the models' engine threads

    app = openai_app("tinystories serve", lifespan=lifespan)

    app.add_middleware(Guard, api_key=api_key, loopback_only=_is_loopback(bind_host))

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
        req = _checked(CompletionRequest, await _read_body(request, max_body_bytes))
        loaded = await _load(pool, req.model)
        return await complete(req, loaded, text_prompts(req, loaded.tokenizer, loaded.vocab_size), request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        req = _checked(ChatRequest, await _read_body(request, max_body_bytes))
        loaded = await _load(pool, req.model)
        if not loaded.entry.instruct:
            raise APIError(
                400,
                f"model {req.model} is not an Instruct model (trained from an -instruct preset): "
                "use /v1/completions with a story beginning",
                param="model",
            )
        prompt = chat_instruction(req.messages)
        return await complete(req, loaded, [Prompt(prompt_ids(loaded.tokenizer, prompt), prompt)], request)

    # vLLM's routes that tools and evaluation harnesses probe; without a model named, the first served model's
    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.post("/tokenize")
    async def tokenize(request: Request) -> TokenizeResponse:
        req = _checked(TokenizeRequest, await _read_body(request, max_body_bytes))
        loaded = await _load(pool, req.model or next(iter(pool.entries)))
        ids = loaded.tokenizer.encode(req.prompt, allowed_special="all")
        strs = [loaded.tokenizer.decode([t]) for t in ids] if req.return_token_strs else None
        return TokenizeResponse(count=len(ids), max_model_len=loaded.context, tokens=ids, token_strs=strs)

    @app.post("/detokenize")
    async def detokenize(request: Request) -> DetokenizeResponse:
        req = _checked(DetokenizeRequest, await _read_body(request, max_body_bytes))
        loaded = await _load(pool, req.model or next(iter(pool.entries)))
        bad = [t for t in req.tokens if not 0 <= t < loaded.tokenizer.n_vocab]
        if bad:
            message = f"tokens: token id {bad[0]} is outside the vocabulary (0..{loaded.tokenizer.n_vocab - 1})"
            raise APIError(400, message, param="tokens")
        return DetokenizeResponse(prompt=loaded.tokenizer.decode(req.tokens))

    @app.get("/tokenizer_info")
    async def tokenizer_info(model: str | None = None) -> TokenizerInfo:
        loaded = await _load(pool, model or next(iter(pool.entries)))
        eot = loaded.tokenizer.decode([loaded.tokenizer.eot_token])
        return TokenizerInfo(eos_token=eot, bos_token=eot, pad_token=eot, model_max_length=loaded.context)

    return app


def _checked(cls: type[T], body: bytes) -> T:
    """``body`` as ``cls``; a 400 naming the first field this server does not honour (OpenAI's or not)."""
    req = parse_request(cls, body)
    unknown = unknown_fields(req)
    if unknown:
        raise APIError(
            400,
            f"{unknown[0]}: not supported by tinystories serve (the README lists the fields it honours)",
            param=unknown[0],
        )
    return req


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    host = host.strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _cross_site(method: str, headers: dict[bytes, bytes], *, loopback_only: bool) -> APIError | None:
    """What a web page on another site could make a browser send, with no API key to stop it: a POST body that is
    not ``application/json`` (a form, ``text/plain``: no CORS preflight) and, on a loopback-only server, a ``Host``
    that is not loopback (DNS rebinding). The openai client, lm-eval, ``curl -H 'Content-Type:
    application/json'`` and the playground send neither."""
    if loopback_only:
        host = headers.get(b"host", b"").decode("latin-1")
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]", 1)[0] + "]"
        if not _is_loopback(name):
            return APIError(
                403,
                f"Host {host!r} is not this machine: a server bound to loopback answers loopback names only "
                "(localhost, 127.0.0.1, [::1]); bind with --host to serve other names",
                code="host_not_allowed",
            )
    if method == "POST":
        media = headers.get(b"content-type", b"").decode("latin-1").split(";", 1)[0].strip().lower()
        if media != "application/json":
            return APIError(
                415,
                f"Content-Type {media or 'none'!r}: the request body must be JSON, sent as application/json",
                code="unsupported_media_type",
            )
    return None


class Guard:
    """Plain ASGI in front of every route: :func:`_cross_site`'s refusals, then, with an API key,
    ``Authorization: Bearer KEY`` on everything but ``/`` (401 otherwise). Not a ``@app.middleware``: Starlette's
    BaseHTTPMiddleware wraps every request in a task group and memory streams, which cost more than the rest of a
    request's path (docs/serving.md)."""

    def __init__(self, app: Any, api_key: str | None, loopback_only: bool) -> None:
        self.app, self.loopback_only = app, loopback_only
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            error = _cross_site(scope["method"], headers, loopback_only=self.loopback_only)
            if error is None and self.expected is not None and scope["path"] != "/":
                if not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
                    error = APIError(
                        401, "missing or incorrect API key (send Authorization: Bearer KEY)", code="invalid_api_key"
                    )
            if error is not None:
                await JSONResponse(error.body(), status_code=error.status)(scope, receive, send)
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
    except Exception as exc:  # a damaged or foreign checkpoint: say which and why, the server goes on
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
