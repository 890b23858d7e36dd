"""One completion request, text or chat, from checked fields to the answer: the prompts as tokens, the rows the
engine continues (penalties, bias, log-probabilities, ``best_of`` candidates), the prompt's scores for ``echo``,
and the answer, whole or streamed (the shapes are :mod:`tinystories.serve.protocol`'s).
"""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from tinystories.model.engine import Job
from tinystories.model.generate import PromptScore, Row, prompt_ids, score_prompt
from tinystories.serve.api import Choice, chunk_body, random_seed, stops_of, usage
from tinystories.serve.models import LoadedModel
from tinystories.serve.protocol import (
    APIError,
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatLogprobs,
    ChatRequest,
    CompletionLogprobs,
    CompletionRequest,
    TextChoice,
    TextCompletion,
    TokenLogprob,
    TopLogprob,
    new_id,
)
from tinystories.tokenizer import Tokenizer

DEFAULT_MAX_TOKENS = 16  # /v1/completions without max_tokens, as OpenAI and vLLM; chat: the rest of the context
MAX_ROWS = 128  # stories per request (prompts x best_of)


@dataclass
class Prompt:
    ids: list[int]
    text: str  # as echoed: the prompt string, or its token ids' text


def text_prompts(req: CompletionRequest, tokenizer: Tokenizer, vocab_size: int) -> list[Prompt]:
    """``prompt`` as OpenAI takes it: a string, strings, token ids, or lists of token ids."""
    raw = req.prompt
    items: list[Any] = [raw] if isinstance(raw, str) or (raw and isinstance(raw[0], int)) else list(raw)
    if not items:
        raise APIError(400, "prompt: an empty list", param="prompt")
    prompts = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            prompts.append(Prompt(prompt_ids(tokenizer, item), item))
            continue
        if not item:
            raise APIError(400, f"prompt.{i}: an empty list of token ids", param="prompt")
        bad = [t for t in item if not 0 <= t < vocab_size]
        if bad:
            raise APIError(
                400, f"prompt: token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})", param="prompt"
            )
        prompts.append(Prompt(list(item), tokenizer.decode(item)))
    return prompts


def _logit_bias(req: ChatRequest | CompletionRequest, vocab_size: int) -> dict[int, float] | None:
    if not req.logit_bias:
        return None
    bias = {}
    for key, value in req.logit_bias.items():
        if not key.lstrip("-").isdigit() or not 0 <= int(key) < vocab_size:
            raise APIError(400, f"logit_bias: {key!r} is not a token id (0..{vocab_size - 1})", param="logit_bias")
        if not -100 <= value <= 100:
            raise APIError(400, f"logit_bias: {value} for token {key} is outside -100..100", param="logit_bias")
        bias[int(key)] = value
    return bias


@dataclass
class Settings:
    """What a request asks for beyond the prompts, checked against the model."""

    kind: Literal["text", "chat"]
    max_tokens: int
    best_of: int  # candidates per prompt; the ``n`` with the highest summed log-probability are answered
    logprobs: int | None  # alternatives per token, None: no log-probabilities
    echo: bool


def settings_of(req: ChatRequest | CompletionRequest, prompts: list[Prompt], context: int) -> Settings:
    if isinstance(req, CompletionRequest):
        kind: Literal["text", "chat"] = "text"
        best_of, logprobs, echo, max_tokens = req.best_of or req.n, req.logprobs, req.echo, req.max_tokens
    else:
        kind, best_of, echo = "chat", req.n, False
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs: needs logprobs: true", param="top_logprobs")
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "stream_options: only with stream: true", param="stream_options")
    if best_of < req.n:
        raise APIError(400, f"best_of: {best_of} is less than n ({req.n})", param="best_of")
    if req.stream and best_of > req.n:
        raise APIError(400, "best_of: cannot be more than n when streaming", param="best_of")
    if req.stream and logprobs is not None:
        raise APIError(400, "logprobs: not available when streaming", param="logprobs")
    if len(prompts) * best_of > MAX_ROWS:
        name = "best_of" if best_of > req.n else "n"
        raise APIError(400, f"{len(prompts)} prompts x {name}={best_of} is over {MAX_ROWS} stories", param=name)
    longest = max(len(p.ids) for p in prompts)
    if longest > context or (longest == context and max_tokens != 0):
        raise APIError(
            400,
            f"the prompt is {longest} tokens; {req.model} has a context of {context} tokens",
            param="prompt",
            code="context_length_exceeded",
        )
    if max_tokens is None:
        max_tokens = context - longest if kind == "chat" else min(DEFAULT_MAX_TOKENS, context - longest)
    elif longest + max_tokens > context:
        raise APIError(
            400,
            f"{req.model} has a context of {context} tokens, but {longest} prompt tokens + "
            f"max_tokens {max_tokens} were requested",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return Settings(kind, max_tokens, best_of, logprobs, echo)


async def complete(
    req: ChatRequest | CompletionRequest, loaded: LoadedModel, prompts: list[Prompt], http: Request
) -> Any:
    """The answer to a checked request: a :class:`TextCompletion` / :class:`ChatCompletion`, or its stream. When
    the client of ``http`` disconnects first, its rows leave the engine's batch at the next step."""
    tokenizer = loaded.tokenizer
    settings = settings_of(req, prompts, loaded.context)
    stops = stops_of(req)
    bias = _logit_bias(req, loaded.vocab_size)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def emit(index: int, delta: str, finish_reason: str | None) -> None:  # delivered once per engine step
        loaded.engine.post(loop, events.put_nowait, ("delta", index, delta, finish_reason))

    seed = req.seed if req.seed is not None else random_seed()
    device = loaded.engine.decoder.device
    record = settings.logprobs if settings.logprobs is not None else (0 if settings.best_of > req.n else None)
    choices: list[Choice] = []
    for p, prompt in enumerate(prompts):
        for j in range(settings.best_of):
            index = p * settings.best_of + j
            choice = Choice(index, tokenizer, stops, settings.max_tokens, emit if req.stream else None)
            # Row r of a request seeded s draws from its own generator seeded s + r, as `tinystories sample`.
            choice.row = Row(
                prompt.ids,
                settings.max_tokens,
                req.temperature,
                req.top_k,
                req.top_p if req.top_p < 1 else None,
                torch.Generator(device=device).manual_seed(seed + choice.index),
                choice.on_token,
                presence_penalty=req.presence_penalty,
                frequency_penalty=req.frequency_penalty,
                logit_bias=bias,
                logprobs=record,
            )
            choices.append(choice)
            if req.stream and settings.echo:
                emit(choice.index, prompt.text, None)
    job = _start(loaded, choices, loop, events)
    watch = asyncio.create_task(_cancel_on_disconnect(http, job))  # cancelled with the answer
    rid = new_id("chatcmpl-" if settings.kind == "chat" else "cmpl-")
    prompt_tokens = sum(len(p.ids) for p in prompts)
    if req.stream:
        include_usage = req.stream_options is not None and req.stream_options.include_usage
        return _stream(
            settings.kind, rid, req.model, events, choices, job, watch, prompt_tokens if include_usage else None
        )
    try:
        while (event := await events.get())[0] != "done":
            pass
    finally:  # answered, or this handler was cancelled: nothing more to generate
        watch.cancel()
        job.cancelled = True
    if event[1] is not None:
        raise APIError(500, f"generation failed: {event[1]}", type="server_error")
    scores: list[PromptScore | None] = [None] * len(prompts)
    if settings.echo and settings.logprobs is not None:
        scores = list(await asyncio.to_thread(_score, loaded, [p.ids for p in prompts], settings.logprobs))
    kept = [c for p in range(len(prompts)) for c in _best(choices[p * settings.best_of :][: settings.best_of], req.n)]
    for index, choice in enumerate(kept):
        choice.index = index
    answer = Answer(tokenizer, settings, prompts, scores)
    if settings.kind == "chat":
        return ChatCompletion(
            id=rid, model=req.model, choices=[answer.chat(c) for c in kept], usage=usage(prompt_tokens, kept)
        )
    return TextCompletion(
        id=rid,
        model=req.model,
        choices=[answer.text(c, c.index // req.n) for c in kept],
        usage=usage(prompt_tokens, kept),
    )


def _start(loaded: LoadedModel, choices: list[Choice], loop: Any, events: asyncio.Queue[tuple[Any, ...]]) -> Job:
    """Hand the rows to the model's engine; ``("done", error)`` arrives on ``events`` after the last token."""

    def done(job: Job) -> None:  # in the engine thread, after the last token
        if job.error is None:
            for choice in choices:
                choice.finish()
        loaded.engine.post(loop, events.put_nowait, ("done", job.error))

    job = Job([c.row for c in choices], done)
    if choices[0].max_tokens == 0:  # nothing to generate (echo scores the prompt only)
        done(job)
    else:
        loaded.engine.submit(job)
    return job


async def _cancel_on_disconnect(http: Request, job: Job) -> None:
    """Cancel ``job`` when the client disconnects before its answer (the body was read: what comes next is
    the disconnect)."""
    while (await http.receive())["type"] != "http.disconnect":
        pass
    job.cancelled = True


def _score(loaded: LoadedModel, prompts: list[list[int]], k: int) -> list[PromptScore]:
    with loaded.autocast():  # a context of this thread's own: autocast state is per thread
        return [score_prompt(loaded.engine.model, ids, k) for ids in prompts]


def _best(candidates: list[Choice], n: int) -> list[Choice]:
    """The ``n`` candidates with the highest summed log-probability (all of them, in order, without best_of)."""
    if len(candidates) == n:
        return candidates
    return sorted(candidates, key=lambda c: -sum(c.row.chosen_logprobs))[:n]


def _stream(
    kind: str,
    rid: str,
    model: str,
    events: asyncio.Queue[tuple[Any, ...]],
    choices: list[Choice],
    job: Job,
    watch: asyncio.Task[None],
    prompt_tokens: int | None,
) -> StreamingResponse:
    async def stream() -> AsyncIterator[str]:
        try:
            event: tuple[Any, ...] | None = await events.get()
            while event is not None and event[0] != "done":
                # What has arrived (a step's deltas, more when this client lags) goes out in one write; a
                # choice's consecutive deltas are one chunk.
                pending: list[tuple[int, str, str | None]] = []
                while event is not None and event[0] != "done":
                    _, index, delta, finish_reason = event
                    if pending and pending[-1][0] == index and pending[-1][2] is None:
                        pending[-1] = (index, pending[-1][1] + delta, finish_reason)
                    else:
                        pending.append((index, delta, finish_reason))
                    event = None if events.empty() else events.get_nowait()
                yield "".join(_sse(chunk_body(kind, rid, model, *item)) for item in pending)
                if event is None:
                    event = await events.get()
            assert event is not None  # the "done" event
            if event[1] is not None:
                yield _sse(APIError(500, f"generation failed: {event[1]}", type="server_error").response())
            elif prompt_tokens is not None:  # stream_options.include_usage
                yield _sse(chunk_body(kind, rid, model, None, "", None, usage(prompt_tokens, choices)))
            yield "data: [DONE]\n\n"
        finally:  # the client went away (or the stream ended): its rows leave the batch at the next step
            job.cancelled = True
            watch.cancel()

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _sse(event: BaseModel) -> str:
    return f"data: {event.model_dump_json()}\n\n"


class Answer:
    """The choices of a finished request as OpenAI writes them, with their log-probabilities when asked."""

    def __init__(self, tokenizer: Tokenizer, settings: Settings, prompts: list[Prompt], scores: list[Any]):
        self.tokenizer, self.settings, self.prompts, self.scores = tokenizer, settings, prompts, scores

    def _generated(self, choice: Choice) -> list[tuple[int, float, list[tuple[int, float]]]]:
        """(token, log-prob, top alternatives) of each generated token, with the <|endoftext|> that ended the row."""
        row = choice.row
        ids = choice.tokens + [self.tokenizer.eot_token] * (len(row.chosen_logprobs) > len(choice.tokens))
        return list(zip(ids, row.chosen_logprobs, row.top_logprobs))

    def text(self, choice: Choice, p: int) -> TextChoice:
        prompt = self.prompts[p]
        text = (prompt.text if self.settings.echo else "") + choice.text
        logprobs = None
        if self.settings.logprobs is not None:
            entries: list[tuple[int, float | None, list[tuple[int, float]] | None]] = []
            score = self.scores[p]
            if self.settings.echo and score is not None:
                entries += zip(prompt.ids, score.token_logprobs, score.top_logprobs)
            generated = self._generated(choice)
            entries += generated
            offsets = _offsets(self.tokenizer, prompt.ids, len(prompt.text)) if self.settings.echo else []
            start = len(prompt.text) if self.settings.echo else 0
            offsets += [start + o for o in _offsets(self.tokenizer, [t for t, _, _ in generated])]
            if choice.cut:  # a stop string ended the text: the tokens after it are not part of it
                entries = [e for e, o in zip(entries, offsets) if o < len(text)]
            logprobs = CompletionLogprobs(
                tokens=[self.tokenizer.decode([t]) for t, _, _ in entries],
                token_logprobs=[lp for _, lp, _ in entries],
                top_logprobs=[None if top is None else self._top_dict(t, lp, top) for t, lp, top in entries],
                text_offset=offsets[: len(entries)],
            )
        return TextChoice(index=choice.index, text=text, logprobs=logprobs, finish_reason=choice.finish_reason)

    def _top_dict(self, token: int, logprob: float | None, top: list[tuple[int, float]]) -> dict[str, float]:
        """The ``k`` most likely tokens and the chosen one (as vLLM gives them), by text."""
        found: dict[str, float] = {}
        for t, lp in [*top, *([(token, logprob)] if logprob is not None else [])]:
            key = self.tokenizer.decode([t])
            found[key] = max(lp, found.get(key, lp))
        return found

    def chat(self, choice: Choice) -> ChatChoice:
        logprobs = None
        if self.settings.logprobs is not None:
            generated = self._generated(choice)[: len(choice.tokens)]
            if choice.cut:  # a stop string ended the text: the tokens after it are not part of it
                offsets = _offsets(self.tokenizer, choice.tokens)
                generated = [g for g, o in zip(generated, offsets) if o < len(choice.text)]
            content = [
                TokenLogprob(**self._top_logprob(t, lp).model_dump(), top_logprobs=[self._top_logprob(*x) for x in top])
                for t, lp, top in generated
            ]
            logprobs = ChatLogprobs(content=content)
        return ChatChoice(
            index=choice.index,
            message=AssistantMessage(content=choice.text),
            logprobs=logprobs,
            finish_reason=choice.finish_reason,
        )

    def _top_logprob(self, token: int, logprob: float) -> TopLogprob:
        text, raw = self.tokenizer.decode([token]), self.tokenizer.token_bytes(token)
        return TopLogprob(token=text, logprob=logprob, bytes=list(raw))


def _offsets(tokenizer: Tokenizer, ids: list[int], cap: int | None = None) -> list[int]:
    """Where each token's text starts: the length of the text of the tokens before it (an unfinished UTF-8
    character there counts as the one U+FFFD it decodes to), at most ``cap``."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    offsets, length = [], 0
    for token in ids:
        start = length + (1 if decoder.getstate()[0] else 0)
        offsets.append(start if cap is None else min(start, cap))
        length += len(decoder.decode(tokenizer.token_bytes(token)))
    return offsets
