r"""Held-out loss: nats per token, perplexity, bits per byte and word perplexity.

Bits per byte divides the summed negative log-likelihood (in bits) by the UTF-8 bytes of the text that
was predicted, so models with different tokenizers (GPT-Neo's 50K vocabulary, a restricted 10K one, a
Hugging Face model) are compared on the same footing; loss per token and perplexity are not comparable
across vocabularies. Word perplexity is ``exp(nll / words)``, words counted as lm-eval counts them
(``len(re.split(r"\s+", story))`` per story).

Two conventions (``HeldOutLoss.scored``):

* ``"stream"`` (:func:`text_loss`, the default of ``eval loss --stories``): the stories joined by
  ``<|endoftext|>`` into one stream, scored in consecutive windows; the separators are predicted like any
  token (and carry no bytes), and a story's first tokens see the story before it.
* ``"stories"`` (:func:`stories_loss`, ``eval loss --no-eot``): lm-eval's ``loglikelihood_rolling``; each
  story alone, after an ``<|endoftext|>`` prefix that is not scored, in disjoint windows whose last one
  reaches back a whole window; no separator is scored. ``bits_per_byte`` and ``word_perplexity`` then equal
  lm-eval's metrics of the same name on a task whose documents are the stories.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tinystories.corpus import EOT
from tinystories.data import IGNORE_INDEX, TokenLoader
from tinystories.evaluate.students import GPTNeoStudent, Student, documents_nll, windowed_nll
from tinystories.tokenizer import Tokenizer


@dataclass(frozen=True)
class HeldOutLoss:
    model: str
    source: str
    tokens: int  # predicted tokens
    bytes: int  # UTF-8 bytes of the predicted text
    nll_nats: float  # summed negative log-likelihood
    window: int = 0  # tokens per scoring window
    words: int = 0  # lm-eval's word count of the stories (0: not counted)
    scored: str = "stream"  # "stream" (separators scored, stories in sequence), "stories" (lm-eval's), "packed"

    @property
    def loss(self) -> float:
        return self.nll_nats / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        return self.nll_nats / math.log(2) / self.bytes

    @property
    def word_perplexity(self) -> float | None:
        return math.exp(self.nll_nats / self.words) if self.words else None

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
            "word_perplexity": self.word_perplexity,
        }


def count_words(story: str) -> int:
    """Words as lm-eval's ``loglikelihood_rolling`` tasks count them."""
    return len(re.split(r"\s+", story))


def text_loss(
    student: Student,
    text: str,
    *,
    source: str = "<text>",
    stride: int | None = None,
    batch_size: int = 8,
    max_bytes: int | None = None,
    seq_len: int | None = None,
) -> HeldOutLoss:
    """Loss of ``student`` on ``text`` (``max_bytes`` keeps the head of the text, cut at a line break) in
    windows of ``seq_len`` tokens (default: the length the model was trained at)."""
    if max_bytes is not None and len(text.encode("utf-8")) > max_bytes:
        head = text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
        text = head[: head.rfind("\n") + 1] or head
    if not text.replace(EOT, "").strip():
        raise ValueError(f"{source}: no text to score")
    ids = student.encode_for_scoring(text)
    window = _window(student, seq_len)
    nll, scored = windowed_nll(ids, student.window_logits, context=window, stride=stride, batch_size=batch_size)
    n_bytes = len(text.replace(EOT, "").encode("utf-8"))
    words = sum(count_words(story) for story in text.split(EOT) if story.strip())
    return HeldOutLoss(student.info.name, source, len(scored), n_bytes, nll, window, words, "stream")


def stories_loss(
    student: Student,
    stories: Sequence[str],
    *,
    source: str = "<stories>",
    stride: int | None = None,
    batch_size: int = 8,
    max_bytes: int | None = None,
    seq_len: int | None = None,
) -> HeldOutLoss:
    """Loss of ``student`` on each story alone, lm-eval's ``loglikelihood_rolling`` convention (module docstring);
    ``max_bytes`` keeps the first stories that fit (at least one)."""
    kept: list[str] = []
    for story in stories:
        if kept and max_bytes is not None and sum(len(s.encode("utf-8")) for s in [*kept, story]) > max_bytes:
            break
        kept.append(story)
    if not any(story.strip() for story in kept):
        raise ValueError(f"{source}: no text to score")
    window = _window(student, seq_len)
    documents = [student.encode_for_scoring(story) for story in kept]  # [<|endoftext|>, the story's tokens]
    nll = documents_nll(
        documents, student.window_logits, context=window, stride=stride, batch_size=batch_size, full_last_window=True
    )
    return HeldOutLoss(
        student.info.name,
        source,
        sum(len(ids) - 1 for ids in documents),
        sum(len(story.encode("utf-8")) for story in kept),
        sum(nll),
        window,
        sum(count_words(story) for story in kept),
        "stories",
    )


def _window(student: Student, seq_len: int | None) -> int:
    if seq_len is not None and not 1 <= seq_len <= student.context_length:
        raise ValueError(
            f"seq_len={seq_len} must be between 1 and {student.info.name}'s context of {student.context_length} tokens"
        )
    return seq_len or student.trained_seq_len


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for; special tokens (separators) count zero."""
    lengths = np.array([len(token) for token in tokenizer.vocab], dtype=np.int64)
    for token_id in tokenizer.special_tokens.values():
        lengths[token_id] = 0
    return lengths


@torch.no_grad()
def split_loss(
    student: GPTNeoStudent,
    data_dir: str | Path,
    *,
    split: str = "val",
    batch_size: int = 8,
    max_tokens: int | None = None,
    seq_len: int | None = None,
) -> HeldOutLoss:
    """Loss on a split of token shards (``tinystories data prepare``), in the packed layout the trainer uses,
    in windows of ``seq_len`` tokens (default: the length the model was trained at).

    The shards must have been made with the model's own tokenizer (checked by fingerprint); for models
    with other vocabularies use :func:`text_loss` on the raw text instead.
    """
    tokenizer = student.tokenizer
    loader = TokenLoader(
        data_dir,
        split=split,
        batch_size=batch_size,
        seq_len=_window(student, seq_len),
        mode="packed",
        shuffle=False,
        loop=False,
        expected_fingerprint=tokenizer.fingerprint,
    )
    byte_lengths = torch.from_numpy(token_byte_lengths(tokenizer))
    nll, tokens, n_bytes = 0.0, 0, 0
    for x_array, y_array in loader:
        x, y = torch.as_tensor(x_array), torch.as_tensor(y_array)
        logits = student.window_logits(x).float()
        y_device = y.to(logits.device)
        nll += float(
            F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y_device.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
            )
        )
        valid = y != IGNORE_INDEX
        tokens += int(valid.sum())
        n_bytes += int(byte_lengths[y[valid]].sum())
        if max_tokens is not None and tokens >= max_tokens:
            break
    if tokens == 0:
        raise ValueError(f"{data_dir}: split {split!r} holds no tokens")
    return HeldOutLoss(student.info.name, f"{data_dir}:{split}", tokens, n_bytes, nll, loader.seq_len, 0, "packed")
