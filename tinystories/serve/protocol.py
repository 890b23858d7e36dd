"""The OpenAI API's shapes as pydantic models: one definition for ``tinystories serve`` (:mod:`.app`) and the
OpenAI-compatible test server (:mod:`tinystories.testing.openai_server`).

Requests are validated with these models (fields they do not declare are kept aside: the test server ignores them,
``tinystories serve`` refuses them, :func:`unknown_fields`; ``top_k`` is accepted as an extension, like vLLM); every
failure is an :class:`APIError`, answered as ``{"error": {"message", "type", "param", "code"}}`` with its HTTP status.
Answers are built as these models and sent as their JSON. Shapes: chat and text completions (whole and streamed,
with log-probabilities), vLLM's tokenizer routes, models, errors, and the Files and Batches objects of the Batch API.
Only pydantic is needed here (no torch, no FastAPI).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

T = TypeVar("T", bound=BaseModel)


def new_id(prefix: str) -> str:
    """An object id as OpenAI writes them: ``chatcmpl-...``, ``file-...``, ``batch_...`` (``prefix`` ends with the
    separator)."""
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


# ------------------------------------------------------------------------------------------------ errors
class ErrorDetail(BaseModel):
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class APIError(Exception):
    """A failed request: the app answers it as :class:`ErrorResponse` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.headers = status, headers
        self.detail = ErrorDetail(message=message, type=type, param=param, code=code)

    def response(self) -> ErrorResponse:
        return ErrorResponse(error=self.detail)

    def body(self) -> dict[str, Any]:
        return self.response().model_dump()


# ------------------------------------------------------------------------------------------------ requests
class _Request(BaseModel):
    # Fields a model does not declare are kept in ``model_extra``: the test server ignores them, as OpenAI-compatible
    # servers often do; ``tinystories serve`` answers each with a 400 naming it (:func:`unknown_fields`).
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Request):
    include_usage: bool = False


class Sampling(_Request):
    """The fields both completion requests share, with ``tinystories serve``'s limits (``n``, torch seeds)."""

    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)  # an extension, as vLLM's
    n: int = Field(1, ge=1, le=32)
    seed: int | None = Field(None, ge=0, lt=2**63 - 1024)  # torch seeds; choice r uses seed + r
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None  # token id (as a string) -> -100..100, added to its score
    user: str | None = None  # an end-user id for the provider's abuse monitoring: accepted, no effect here
    safety_identifier: str | None = None  # the same, by its newer name


MAX_LOGPROBS = 5  # logprobs (completions) and top_logprobs (chat) at most


class CompletionRequest(Sampling):
    # a text, texts, one prompt's token ids, or several prompts' token ids
    prompt: str | list[str] | list[int] | list[list[int]] = ""
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: int | None = Field(None, ge=1, le=32)


class ContentPart(_Request):
    type: Literal["text"] = "text"
    text: str = ""


class Message(_Request):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart]  # a string, or text parts as OpenAI's API takes them

    @property
    def text(self) -> str:
        """The content's text; text parts are joined by newlines, as vLLM joins them."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


def unknown_fields(model: BaseModel, where: str = "") -> list[str]:
    """The fields sent but not declared by ``model`` or the models inside it, as dotted paths
    (``suffix``, ``messages.0.name``)."""
    found = [f"{where}{name}" for name in model.model_extra or {}]
    for name in type(model).model_fields:
        value = getattr(model, name)
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(item, BaseModel):
                found += unknown_fields(item, f"{where}{name}.{i}." if isinstance(value, list) else f"{where}{name}.")
    return found


class TokenizeRequest(_Request):
    """vLLM's ``POST /tokenize`` (the text form); ``model`` picks the served model (default: the first)."""

    model: str | None = None
    prompt: str
    add_special_tokens: bool = True  # this tokenizer adds no special tokens either way
    return_token_strs: bool = False


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[int]


class BatchCreateRequest(_Request):
    input_file_id: str
    endpoint: str = "/v1/chat/completions"
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None


class BatchInputLine(_Request):
    """One line of a Batch API input file."""

    custom_id: str
    method: str = "POST"
    url: str = "/v1/chat/completions"
    body: dict[str, Any]


def parse_request(cls: type[T], body: bytes | dict[str, Any]) -> T:
    """``body`` (JSON bytes, or already parsed) as ``cls``; an :class:`APIError` (400) naming the first problem."""
    try:
        return cls.model_validate(body) if isinstance(body, dict) else cls.model_validate_json(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        if error["type"] == "json_invalid":
            raise APIError(400, f"the request body is not valid JSON ({error['msg']})", code="invalid_json") from None
        param = ".".join(str(p) for p in error["loc"]) or None
        raise APIError(400, f"{param}: {error['msg']}" if param else error["msg"], param=param) from None


# ------------------------------------------------------------------------------------------------ answers
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: str | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: None = None
    finish_reason: str | None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion; the closing one has no choices and the usage."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    """Per token of a text choice (the prompt's first when echoed): its text, log-probability (``None`` for the
    prompt's first token), the most likely tokens there with theirs, and where it starts in the choice's text."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class TextChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None


class TextCompletion(BaseModel):
    """A text completion, and (as OpenAI streams them) each event of a streamed one, where ``usage`` is set only in
    the closing event, which has no choices."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    """``GET /tokenizer_info`` as vLLM answers it and lm-eval's ``tokenizer_backend="remote"`` reads it."""

    tokenizer_class: str = "PreTrainedTokenizerFast"
    eos_token: str
    bos_token: str
    pad_token: str
    unk_token: None = None
    model_max_length: int
    chat_template: None = None


class Model(BaseModel):
    """A served model; ``run``, ``step`` and ``instruct`` are this project's extensions (the playground reads them)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tinystories"
    run: str | None = None
    step: int | None = None
    instruct: bool = False


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


# ------------------------------------------------------------------------------------------------ Files, Batches
class FileObject(BaseModel):
    id: str = Field(default_factory=lambda: new_id("file-"))
    object: Literal["file"] = "file"
    bytes: int
    created_at: int = Field(default_factory=now)
    filename: str
    purpose: str
    status: str = "processed"


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class Batch(BaseModel):
    id: str = Field(default_factory=lambda: new_id("batch_"))
    object: Literal["batch"] = "batch"
    endpoint: str
    input_file_id: str
    completion_window: str
    status: Literal["validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelled"]
    created_at: int = Field(default_factory=now)
    expires_at: int
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    metadata: dict[str, str] | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)


class BatchResponse(BaseModel):
    status_code: int
    request_id: str
    body: ChatCompletion | ErrorResponse


class BatchOutputLine(BaseModel):
    """One line of a Batch API output (or error) file."""

    id: str = Field(default_factory=lambda: new_id("batch_req_"))
    custom_id: str
    response: BatchResponse | None
    error: ErrorDetail | None = None
