"""Serving OpenAI requests with our models: ``stop`` strings, the Instruct chat layout and the choices as they
stream (the request and answer shapes themselves are :mod:`tinystories.serve.protocol`'s).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from tinystories.corpus import format_instructions
from tinystories.model.generate import Row
from tinystories.serve.protocol import (
    APIError,
    ChatCompletionChunk,
    ChunkChoice,
    Delta,
    Message,
    Sampling,
    TextChoice,
    TextCompletion,
    Usage,
)
from tinystories.tokenizer import Tokenizer
from tinystories.vocabulary import FEATURE_LABELS

MAX_STOPS = 4


def stops_of(request: Sampling) -> list[str]:
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if len(stops) > MAX_STOPS or any(not s for s in stops):
        raise APIError(400, f"stop: at most {MAX_STOPS} non-empty strings", param="stop")
    return stops


# ------------------------------------------------------------------------------------------------ Instruct
_INSTRUCTIONS = {"features": "features", "words": "words", "summary": "summary", "random sentence": "sentence"}
# a feature by our name (bad_ending) or the layout's label (BadEnding), any case
_FEATURES = {key.lower(): name for name, label in FEATURE_LABELS.items() for key in (name, label)}


def instruct_prompt(content: str) -> str:
    """A chat message written as ``Features: ...`` / ``Words: ...`` / ``Summary: ...`` / ``Random sentence:
    ...`` lines (any subset, any order), optionally followed by ``Story:`` and the story's beginning, in the
    Instruct layout the model was trained on (:func:`tinystories.corpus.format_instructions`)."""
    fields: dict[str, Any] = {}
    lines = content.strip().splitlines()
    beginning = ""
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        key = name.strip().lower()
        if sep and key == "story":
            beginning = "\n".join([value.strip(), *lines[i + 1 :]]).strip()
            break
        if not sep or key not in _INSTRUCTIONS:
            raise APIError(
                400,
                f"messages: unrecognised line {line.strip()[:80]!r}; an Instruct model reads "
                "'Features:', 'Words:', 'Summary:' and 'Random sentence:' lines, then an "
                "optional 'Story:' beginning",
                param="messages",
            )
        fields[_INSTRUCTIONS[key]] = value.strip()
    features = []
    for feature in filter(None, (f.strip() for f in fields.get("features", "").split(","))):
        if feature.lower() not in _FEATURES:
            raise APIError(
                400,
                f"messages: unknown feature {feature!r}; known: {', '.join(FEATURE_LABELS.values())}",
                param="messages",
            )
        features.append(_FEATURES[feature.lower()])
    words = [w.strip() for w in fields.get("words", "").split(",") if w.strip()]
    header = format_instructions(
        words=words, features=features, summary=fields.get("summary") or None, sentence=fields.get("sentence") or None
    )
    return header + beginning


def chat_instruction(messages: list[Message]) -> str:
    """The Instruct prompt of a chat: the text of every system, developer and user message, in order, each on its
    own lines, read as one set of instruction lines (:func:`instruct_prompt`). An assistant or tool message (an
    earlier turn) is refused: an Instruct model writes one story from one instruction, with no conversation."""
    for i, message in enumerate(messages):
        if message.role not in ("system", "developer", "user"):
            raise APIError(
                400,
                f"messages.{i}.role: {message.role!r} messages (earlier turns) are not supported; an Instruct "
                "model writes one story from the instruction lines of the system and user messages",
                param=f"messages.{i}.role",
            )
    if not any(m.role == "user" for m in messages):
        raise APIError(400, "messages: no user message", param="messages")
    return instruct_prompt("\n".join(m.text for m in messages))


# ------------------------------------------------------------------------------------------------ choices
class Choice:
    """One generated story as it streams: turns tokens into text deltas, applies ``stop`` strings.

    ``on_token`` runs in the engine thread; ``emit(index, delta, finish_reason)`` must be thread-safe.
    A delta never ends inside a UTF-8 character or inside what may become a stop string.
    """

    row: Row  # the engine's row for this choice (its log-probabilities when recorded), set by its creator

    def __init__(
        self,
        index: int,
        tokenizer: Tokenizer,
        stops: list[str],
        max_tokens: int,
        emit: Callable[[int, str, str | None], None] | None = None,
    ):
        self.index, self.tokenizer, self.stops, self.max_tokens, self.emit = index, tokenizer, stops, max_tokens, emit
        self.tokens: list[int] = []
        self.text, self.sent = "", 0
        self.finish_reason: str | None = None
        self.cut = False  # a stop string ended the text

    def on_token(self, token: int) -> bool:
        self.tokens.append(token)
        if not self.stops and self.emit is None:  # nothing to check or send before the end
            return True
        self.text = self.tokenizer.decode(self.tokens)
        cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.finish_reason, self.cut = self.text[:cut], "stop", True
            self._send(len(self.text))
            return False
        hold = max((len(s) - 1 for s in self.stops), default=0)
        safe = len(self.text) - hold
        while safe > self.sent and self.text[safe - 1] == "\ufffd":  # an unfinished UTF-8 character
            safe -= 1
        self._send(safe)
        return True

    def finish(self) -> None:
        """After the engine is done with this row: the reason it stopped, and what text is left to send."""
        if self.finish_reason is None:
            self.finish_reason = "length" if len(self.tokens) >= self.max_tokens else "stop"
            self.text = self.tokenizer.decode(self.tokens)
        self._send(len(self.text), self.finish_reason)

    def _send(self, upto: int, finish_reason: str | None = None) -> None:
        delta, self.sent = self.text[self.sent : upto], max(self.sent, upto)
        if self.emit is not None and (delta or finish_reason):
            self.emit(self.index, delta, finish_reason)


def random_seed() -> int:
    return int.from_bytes(os.urandom(6), "little")


def usage(prompt_tokens: int, choices: list[Choice]) -> Usage:
    return Usage.of(prompt_tokens, sum(len(c.tokens) for c in choices))


def chunk_body(
    kind: str,
    rid: str,
    model: str,
    index: int | None,
    delta: str,
    finish_reason: str | None,
    usage_: Usage | None = None,
) -> ChatCompletionChunk | TextCompletion:
    """One server-sent event: a delta of one choice, or (``index=None``) the closing usage chunk."""
    if kind == "text":
        text = [] if index is None else [TextChoice(index=index, text=delta, finish_reason=finish_reason)]
        return TextCompletion(id=rid, model=model, choices=text, usage=usage_)
    chat = []
    if index is not None:
        chat.append(ChunkChoice(index=index, delta=Delta(content=delta), finish_reason=finish_reason))
    return ChatCompletionChunk(id=rid, model=model, choices=chat, usage=usage_)
