"""The one OpenAI-compatible client layer (``openai`` package), shared by synthesis and the judge.

Many chat requests in, one result per request out, with what a half-million-request job needs: bounded
concurrency, worker processes, 429/Retry-After handling, backoff with jitter, bounded attempts whose
failures are returned (never lost), cost accounting and a budget stop. ``client`` (requests, results,
``ClientConfig``, the async ``ChatClient``), ``transport`` (a lean HTTP/1.1 keep-alive transport),
``pricing`` (``PriceTable``, the budget) and ``workers`` (``run_chat``: one event loop or several processes).
"""

from tinystories.llm.client import (
    ChatClient,
    ChatRequest,
    ChatResult,
    ClientConfig,
    FatalAPIError,
    RunStats,
    client_config_from_args,
    new_event_loop,
)
from tinystories.llm.pricing import PriceTable
from tinystories.llm.workers import run_chat

__all__ = [
    "ChatClient",
    "ChatRequest",
    "ChatResult",
    "ClientConfig",
    "FatalAPIError",
    "PriceTable",
    "RunStats",
    "client_config_from_args",
    "new_event_loop",
    "run_chat",
]
