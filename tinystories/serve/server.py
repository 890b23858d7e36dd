"""What the OpenAI-compatible apps share (``tinystories serve`` and the test server,
:mod:`tinystories.testing.openai_server`): a FastAPI app that answers every error in OpenAI's shape, and uvicorn
running an app in a background thread."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tinystories.serve.protocol import APIError


def openai_app(title: str, **kwargs: Any) -> FastAPI:
    """A FastAPI app (no generated docs) whose :class:`APIError`\\ s and HTTP errors (an unknown route: 404) are
    answered as OpenAI's ``{"error": {...}}``, and so is any other exception (500); ``kwargs`` go to ``FastAPI``
    (``lifespan``)."""
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None, **kwargs)

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(APIError(exc.status_code, message).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)  # anything unforeseen: still OpenAI's shape (the server log has the traceback)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        message = f"{request.method} {request.url.path}: internal error: {type(exc).__name__}: {exc}"
        return JSONResponse(APIError(500, message, type="server_error").body(), status_code=500)

    return app


@contextlib.contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0, **options: Any) -> Iterator[str]:
    """Run the ASGI ``app`` with uvicorn in a background thread (port 0: any free port); yields its base URL.
    ``options`` go to ``uvicorn.Config``. On exit the server stops (after its lifespan shutdown)."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(30)
