"""The models under evaluation ("students", as the paper's judge calls them) behind one small interface.

A :class:`Student` completes prompts (sampled or greedy, batched, seeded) and scores text (summed
next-token negative log-likelihood). Three kinds exist: our GPT-Neo checkpoints (``load_checkpoint``), any
in-memory ``GPTNeo`` + ``Tokenizer`` pair (sweeps, tests), and any Hugging Face causal LM directory
(``--hf-model DIR``, e.g. a local GPT-2 XL) so that small models can be compared with large general ones.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F

from tinystories.corpus import EOT
from tinystories.model.checkpoint import load_checkpoint, resolve_checkpoint
from tinystories.model.generate import generate_texts, left_pad
from tinystories.model.gpt_neo import GPTNeo
from tinystories.runtime.device import autocast_context, resolve_device, resolve_execution
from tinystories.tokenizer import Tokenizer


@dataclass
class StudentInfo:
    """What the reports need to place a model: its name, a content hash for the cache, its shape and step."""

    name: str
    identity: str  # content hash of the weights: cache keys use it, so renaming a file keeps its grades
    hidden_size: int | None = None
    num_layers: int | None = None
    num_parameters: int | None = None
    step: int | None = None
    run: str | None = None  # checkpoints of one training run share it: grades-vs-step curves group by it
    extra: dict[str, Any] = field(default_factory=dict)


class Student(Protocol):
    """What the evaluation needs from a model: :class:`GPTNeoStudent` and :class:`HFStudent` have it."""

    info: StudentInfo
    context_length: int
    trained_seq_len: int  # the window held-out loss scores in by default (a HF model: its context)

    def complete(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
    ) -> list[str]:
        """One completion per prompt (temperature 0 = greedy), cut at the end-of-text token."""
        ...

    def encode_for_scoring(self, text: str) -> list[int]:
        """Token ids of ``text`` preceded by a beginning-of-text token, so every text token is predicted.

        ``<|endoftext|>`` in the text separates documents and becomes the model's own separator token.
        """
        ...

    def window_logits(self, windows: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) of full-context forward passes over windows (B, T) of token ids."""
        ...


def fingerprint_path(path: str | Path, *, suffixes: tuple[str, ...] | None = None) -> str:
    """sha256 of a file, or of a directory's files (names and contents, sorted), as 16 hex digits."""
    path = Path(path)
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.is_file() and (suffixes is None or p.suffix in suffixes))
    )
    if not files:
        raise FileNotFoundError(f"{path}: no files to fingerprint")
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def step_from_name(path: str | Path) -> int | None:
    match = re.search(r"step[_-]?(\d+)", Path(path).name)
    return int(match.group(1)) if match else None


# ------------------------------------------------------------------------------------------------ GPT-Neo
class GPTNeoStudent:
    """Our GPT-Neo (``tinystories.model``) with our tokenizer; generation uses the model's KV cache."""

    def __init__(
        self,
        model: GPTNeo,
        tokenizer: Tokenizer,
        info: StudentInfo,
        *,
        dtype: str = "fp32",
        trained_seq_len: int | None = None,
    ):
        self.model, self.tokenizer, self.info = model.eval(), tokenizer, info
        self.context_length = model.config.max_position_embeddings
        self.trained_seq_len = trained_seq_len or self.context_length  # what held-out loss scores by default
        self.device = next(model.parameters()).device
        self.autocast = autocast_context(self.device, dtype)
        config = model.config
        info.hidden_size = info.hidden_size or config.hidden_size
        info.num_layers = info.num_layers or config.num_layers
        info.num_parameters = info.num_parameters or sum(p.numel() for p in model.parameters())

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, name: str | None = None, device: str | torch.device = "cpu", dtype: str = "fp32"
    ) -> GPTNeoStudent:
        """A checkpoint file, or the newest checkpoint of a run directory; ``dtype`` is the autocast dtype."""
        if Path(path).is_dir() and (Path(path) / "config.json").is_file() and not (Path(path) / "checkpoints").is_dir():
            raise FileNotFoundError(f"{path} looks like a Hugging Face model directory: pass it as --hf-model {path}")
        file = resolve_checkpoint(path)
        model, tokenizer, train_config = load_checkpoint(file, device=device)
        run, stem = _run_and_stem(file)
        info = StudentInfo(
            name=name or f"{run}/{stem}",
            identity=fingerprint_path(file),
            step=step_from_name(file),
            run=run,
            extra={"checkpoint": str(file)},
        )
        return cls(model, tokenizer, info, dtype=dtype, trained_seq_len=train_config.get("seq_len"))

    def complete(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
    ) -> list[str]:
        try:
            with self.autocast:
                return generate_texts(
                    self.model,
                    self.tokenizer,
                    prompts,
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_k=top_k,
                    top_p=top_p,
                    seed=seed,
                    include_prompt=False,
                    fit="cut_prompt",
                )
        except ValueError as exc:  # several students are graded at once: say which one
            raise ValueError(f"{self.info.name}: {exc}") from None

    def encode_for_scoring(self, text: str) -> list[int]:
        eot = self.tokenizer.eot_token
        ids = [eot]
        for i, document in enumerate(text.split(EOT)):
            if i:
                ids.append(eot)
            ids.extend(self.tokenizer.encode_ordinary(document))
        return ids

    @torch.no_grad()
    def window_logits(self, windows: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            return self.model(windows.to(self.device)).logits


def _run_and_stem(path: str | Path) -> tuple[str, str]:
    """runs/<run>/checkpoints/step_000100.pt -> (<run>, step_000100): enough to tell sweep checkpoints apart."""
    path = Path(path).resolve()
    run_dir = path.parent.parent if path.parent.name in {"checkpoints", "ckpt"} else path.parent
    return run_dir.name, path.stem


# ------------------------------------------------------------------------------------------------ HF
class HFStudent:
    """Any local Hugging Face causal LM directory (config.json + weights + tokenizer files)."""

    def __init__(
        self, directory: str | Path, *, name: str | None = None, device: str = "cpu", dtype: torch.dtype | None = None
    ):
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:  # the CLIs print ValueErrors as one line
            raise ValueError("--hf-model needs Hugging Face transformers: pip install 'tinystories[hf]'") from None

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"{directory}: not a Hugging Face model directory (no config.json)")
        self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=dtype)
        # transformers declares `to` through @wraps(nn.Module.to), which types it as unbound (self not applied)
        self.model.to(device).eval()  # type: ignore[arg-type]
        self.device = torch.device(device)
        config = self.model.config
        self.context_length = int(
            getattr(config, "max_position_embeddings", None)
            or getattr(config, "n_positions", None)
            or self.tokenizer.model_max_length
        )
        self.trained_seq_len = self.context_length
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ValueError(f"{directory}: the tokenizer has no end-of-text token")
        self.eos = eos
        self.info = StudentInfo(
            name=name or directory.name,
            identity=fingerprint_path(directory, suffixes=(".json", ".safetensors", ".bin", ".model", ".txt")),
            hidden_size=getattr(config, "hidden_size", None) or getattr(config, "n_embd", None),
            num_layers=getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", None),
            num_parameters=sum(p.numel() for p in self.model.parameters()),
            extra={"hf_model": str(directory)},
        )

    @torch.no_grad()
    def complete(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
    ) -> list[str]:
        room = self.context_length - max_new_tokens
        encoded = [self.tokenizer.encode(p, add_special_tokens=False)[-room:] or [self.eos] for p in prompts]
        idx, mask = left_pad(encoded, self.eos)
        width = idx.shape[1]
        torch.manual_seed(seed)  # HF generate samples from the global generator
        sampling = (
            dict(do_sample=True, temperature=temperature, top_k=top_k or 0, top_p=top_p or 1.0)
            if temperature > 0
            else dict(do_sample=False)
        )
        out = self.model.generate(
            input_ids=idx.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=max_new_tokens,
            eos_token_id=self.eos,
            pad_token_id=self.eos,
            **sampling,
        )
        completions = []
        for row in out[:, width:].tolist():
            if self.eos in row:
                row = row[: row.index(self.eos)]
            # decode is typed str | list[str]: a list only for a batch of rows, not for this one row of ids
            completions.append(cast(str, self.tokenizer.decode(row)))
        return completions

    def encode_for_scoring(self, text: str) -> list[int]:
        ids = [self.eos]
        for i, document in enumerate(text.split(EOT)):
            if i:
                ids.append(self.eos)
            ids.extend(self.tokenizer.encode(document, add_special_tokens=False))
        return ids

    @torch.no_grad()
    def window_logits(self, windows: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=windows.to(self.device)).logits.float()


def load_student(spec: str | Path, *, hf: bool = False, device: str = "cpu", dtype: str = "auto") -> Student:
    """A checkpoint file or run directory, or with ``hf=True`` a Hugging Face model directory. ``device`` may be
    "auto"; ``dtype`` "auto" is the trainer's choice for the device (see :func:`resolve_execution`)."""
    if hf:
        return HFStudent(spec, device=str(resolve_device(device, 0)))
    resolved = resolve_device(device, 0)
    execution = resolve_execution(
        resolved, dtype=dtype, impl="torch", compile=False, given=("dtype",)
    )  # KV cache: plain
    return GPTNeoStudent.from_checkpoint(spec, device=resolved, dtype=execution.dtype)


# ------------------------------------------------------------------------------------------------ scoring
def windowed_nll(
    ids: Sequence[int],
    forward: Callable[[torch.Tensor], torch.Tensor],
    *,
    context: int,
    stride: int | None = None,
    batch_size: int = 8,
) -> tuple[float, list[int]]:
    """Summed next-token NLL (nats) of ``ids[1:]`` given everything before, and the ids that were scored.

    Windows of ``context`` tokens advance by ``stride`` (default: ``context``, non-overlapping). Each
    target is scored exactly once, in the first window that predicts it; with a smaller stride the later
    targets of a window see at least ``context - stride`` tokens of history.
    """
    (total,) = documents_nll([ids], forward, context=context, stride=stride, batch_size=batch_size)
    return total, list(ids[1:])


def documents_nll(
    documents: Sequence[Sequence[int]],
    forward: Callable[[torch.Tensor], torch.Tensor],
    *,
    context: int,
    stride: int | None = None,
    batch_size: int = 8,
    full_last_window: bool = False,
) -> list[float]:
    """:func:`windowed_nll` of each document (its ``ids[1:]``), the windows of all documents batched together.

    ``full_last_window``: a document's last window reaches back a whole ``context`` (its targets see all the history
    that fits), as lm-eval's ``loglikelihood_rolling`` windows do, instead of starting a stride after the one before.
    """
    stride = stride or context
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be in 1..{context}, got {stride}")
    docs = [torch.as_tensor(list(ids), dtype=torch.long) for ids in documents]
    # (document, begin, end, first scored input position within the window)
    windows: list[tuple[int, int, int, int]] = []
    for d, tokens in enumerate(docs):
        n = len(tokens)
        scored_until, begin = 1, 0  # targets ids[1:scored_until] are done
        while scored_until < n:
            end = min(begin + context, n - 1)  # inputs ids[begin:end] predict ids[begin+1:end+1]
            if full_last_window and end == n - 1:
                begin = max(0, end - context)
            windows.append((d, begin, end, scored_until - 1 - begin))
            scored_until = end + 1
            begin += stride
    totals = [0.0] * len(docs)
    for first in range(0, len(windows), batch_size):
        group = windows[first : first + batch_size]
        width = max(end - begin for _, begin, end, _ in group)
        x = torch.zeros(len(group), width, dtype=torch.long)
        y = torch.full((len(group), width), -100, dtype=torch.long)
        for row, (d, begin, end, skip) in enumerate(group):
            x[row, : end - begin] = docs[d][begin:end]
            y[row, skip : end - begin] = docs[d][begin + 1 + skip : end + 1]
        logits = forward(x).float()
        y = y.to(logits.device)
        nll = F.cross_entropy(logits.transpose(1, 2), y, ignore_index=-100, reduction="none").sum(dim=1)
        for (d, *_), row_nll in zip(group, nll.tolist()):
            totals[d] += row_nll
    return totals
