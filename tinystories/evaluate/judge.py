"""The judge LLM: a chat function (messages -> reply) over the project's one client layer, :mod:`tinystories.llm`.

Concurrency, retries with backoff and jitter, Retry-After, cost accounting, the budget stop and fatal-error
handling all come from ``ChatClient.run``. Judge conversations go turn by turn, so requests are fed to that
run as the conversations produce them, and each turn awaits its own result.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from tinystories.llm.client import ChatClient, ChatRequest, ChatResult, ClientConfig, RunStats


@dataclass
class ChatReply:
    text: str
    usage: dict[str, int]
    cost_usd: float


# (messages, request id, *, max_tokens=None) -> the judge's reply; raises when the API failed after all retries.
Chat = Callable[..., Awaitable[ChatReply]]

# The longest answer paid for in one judge turn, unless the turn asks for less: an assessment takes a few
# paragraphs; without a limit each request would reserve the model's whole output budget (4,096 tokens).
JUDGE_MAX_TOKENS = 512


class JudgeAPIError(RuntimeError):
    """The judge's API failed for one request after all the client's retries."""


class JudgeStopped(RuntimeError):
    """The client stopped sending (budget reached, or an error no retry can fix such as a bad key)."""


class LLMJudge:
    """The judge model behind the client layer (see the module docstring).

    judge = LLMJudge("gpt-4o", ClientConfig(concurrency=32, max_cost_usd=5))
    async with judge.session() as chat:
        reply = await chat(messages, "request-id")
    """

    def __init__(self, model: str, config: ClientConfig, *, max_tokens: int = JUDGE_MAX_TOKENS):
        # an answer cut at max_tokens is still an answer (the grades turn is parsed, with a follow-up if needed):
        # asking again would pay for the same cut answer
        self.model, self.config = model, dataclasses.replace(config, retry_truncated=False)
        self.max_tokens = max_tokens
        self.stats: RunStats | None = None  # the client's statistics of the last session

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Chat]:
        # Later turns first: conversations already under way finish before new ones start, so a budget
        # stop leaves few paid-for but unfinished conversations behind.
        queue: asyncio.PriorityQueue = asyncio.PriorityQueue()
        order = itertools.count()
        waiting: dict[str, asyncio.Future] = {}

        async def requests() -> AsyncIterator[ChatRequest]:
            while (request := (await queue.get())[2]) is not None:
                yield request

        def on_result(result: ChatResult) -> None:
            future = waiting.pop(result.id, None)
            if future is not None and not future.done():
                future.set_result(result)

        async with ChatClient(self.config) as client:
            runner = asyncio.create_task(client.run(requests(), on_result))

            def stop_waiting(task: asyncio.Task) -> None:
                reason = _stop_reason(task)
                for future in waiting.values():
                    if not future.done():
                        future.set_exception(JudgeStopped(reason))
                waiting.clear()

            runner.add_done_callback(stop_waiting)

            async def chat(
                messages: list[dict[str, str]], request_id: str, *, max_tokens: int | None = None
            ) -> ChatReply:
                if runner.done():
                    raise JudgeStopped(_stop_reason(runner))
                future = asyncio.get_running_loop().create_future()
                waiting[request_id] = future
                request = ChatRequest(
                    id=request_id,
                    body={"model": self.model, "messages": list(messages), "max_tokens": max_tokens or self.max_tokens},
                )
                await queue.put((-len(messages), next(order), request))
                result = await future
                if not result.ok:
                    raise JudgeAPIError(f"{result.error} (after {result.attempts} attempts)")
                return ChatReply(result.text, dict(result.usage), result.cost_usd)

            try:
                yield chat
            finally:
                await queue.put((1, next(order), None))  # after every real request
                self.stats = await runner


def _stop_reason(task: asyncio.Task) -> str:
    if task.cancelled():
        return "the judge client was cancelled"
    if task.exception() is not None:
        return f"the judge client failed: {task.exception()}"
    return f"the judge client stopped: {task.result().stopped or 'finished'}"
