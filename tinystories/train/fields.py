"""The trainer's configuration fields: one pydantic model, each field's docstring its ``--help`` text.

Types and ranges are checked by pydantic field by field; the checks that involve several fields (or the files a
fresh run reads) are the model's validator, which raises :class:`Conflict` naming the keys it involves so the
loader (:mod:`tinystories.train.config`) can say where they were set. Values may arrive as text (the command
line, ``sweep --set``): whole numbers may be written ``1e4`` or ``10_000``, switches ``true/false/yes/no/on/off/
1/0``, and an optional field reads ``none``, ``null`` or an empty value as None (numbers and switches also
``auto``, which is what None means for them: chosen for you).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, FiniteFloat, model_validator

from tinystories.data.loader import MAX_THREADS
from tinystories.model.config import PRESETS, GPTNeoConfig
from tinystories.tokenizer.files import ALIASES, PRETRAINED

# The old name of each renamed field (one name per concept, docs/cli.md). A run's saved config.json may hold
# the old names (read silently); the command line, TOML files and `sweep --set` warn for one release.
RENAMED = {
    "out_dir": "out",
    "vocab_top_k": "vocab_size",
    "sample_tokens": "sample_max_new_tokens",
    "demo_stories": "demo_num_stories",
}
# What None (written "auto", or "none" for the paths) means for each optional field: the --help defaults and
# the messages of a resume say it in these words.
NONE_MEANS = {
    **dict.fromkeys(("hidden_size", "num_layers", "num_heads", "context", "window_size", "dropout"), "the preset's"),
    "init_from_hf": "random initial weights",
    "data": "the offline demo corpus",
    "vocab_size": "the tokenizer's whole vocabulary",
    "seq_len": "the model's context",
    "cpu_threads": "torch's default (all cores)",
    "lr_decay_steps": "max_steps",
    "compile": "on for GPUs with Triton, off on CPU",
    "out": "runs/<preset>-<timestamp>",
}
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
# AdamW moves each weight by about lr per step and multiplies it by (1 - lr x weight_decay): above these bounds
# the weights leave float range (lr=1e308 overflows at the first step), so such values are refused up front.
MAX_LR = 1.0
MAX_LR_TIMES_WEIGHT_DECAY = 1.0
SHAPE_KEYS = ("preset", "hidden_size", "num_layers", "num_heads", "context", "window_size", "init_from_hf")


def current_names(table: dict[str, Any]) -> dict[str, Any]:
    """A saved config (config.json, a checkpoint's) with the old names of renamed fields replaced, silently."""
    return {RENAMED.get(key, key): value for key, value in table.items()}


class Conflict(ValueError):
    """A check across fields failed; ``keys`` are the fields involved (their sources are named in the error)."""

    def __init__(self, keys: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.keys = keys


def _whole_number(value: Any) -> Any:
    """``"1e4"`` and ``"10_000"`` as 10000 (pydantic reads neither); a switch is no number."""
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not a bool")
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return value  # pydantic names the bad value
        return int(number) if number.is_integer() else value
    return value


def _none_from(*words: str) -> BeforeValidator:
    return BeforeValidator(lambda v: None if isinstance(v, str) and v.strip().lower() in words else v)


# None written out: TOML has no null, and a command line has only text.
AUTO = _none_from("", "none", "null", "auto")  # numbers and switches: None = chosen for you
UNSET = _none_from("", "none", "null")  # paths: "auto" could be a folder's name


def _max_threads(value: int) -> int:
    if value > MAX_THREADS:
        raise ValueError(f"is more threads than any machine runs usefully (at most {MAX_THREADS})")
    return value


def _known_preset(value: str) -> str:
    if value not in PRESETS:
        raise ValueError(f"is unknown; choose one of {', '.join(PRESETS)}")
    return value


def _device(value: str) -> str:
    if not DEVICE.match(value):
        raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
    return value


Whole = Annotated[int, BeforeValidator(_whole_number)]
Count = Annotated[Whole, Field(gt=0)]
Threads = Annotated[Whole, Field(gt=0), AfterValidator(_max_threads)]
AutoCount = Annotated[Count | None, AUTO]  # (a constraint outside the Optional would be applied to None too)


class TrainConfig(BaseModel):
    """Train a GPT-Neo (TinyStories): defaults < the preset's training defaults < TOML file < command line."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    # -- the model
    preset: Annotated[str, AfterValidator(_known_preset)] = "demo"
    """Model size and its training defaults: demo (a tiny offline model), or the paper's 1M, 3M, 8M, 28M, 33M,
    21M-1L, 33M-2L (each also as SIZE-instruct)."""
    hidden_size: AutoCount = None
    """Hidden size (overrides the preset's)."""
    num_layers: AutoCount = None
    """Transformer blocks (overrides the preset's; attention alternates global/local)."""
    num_heads: AutoCount = None
    """Attention heads (overrides the preset's; must divide hidden-size)."""
    context: AutoCount = None
    """The model's context length, max_position_embeddings (overrides the preset's)."""
    window_size: AutoCount = None
    """Local attention window of the local layers (overrides the preset's)."""
    dropout: Annotated[Annotated[FiniteFloat, Field(ge=0, lt=1)] | None, AUTO] = None
    """Embedding, attention and residual dropout (overrides the preset's)."""
    init_from_hf: Annotated[str | None, UNSET] = None
    """A Hugging Face GPTNeoForCausalLM folder whose weights (and shape) the run starts from."""
    impl: Literal["auto", "torch", "fused", "hybrid"] = "auto"
    """Model implementation; auto: from the GPU (see docs/kernels.md)."""
    # -- the data
    data: Annotated[str | None, UNSET] = None
    """A prepared shard folder, or .txt/.jsonl story files (comma-separated) to prepare; none: the offline demo
    corpus."""
    tokenizer: str = "gpt2"
    """For --data story files: a tokenizer name or file (see tinystories.tokenizer.resolve_tokenizer)."""
    vocab_size: AutoCount = None
    """Restrict the tokenizer to its most frequent N tokens when preparing --data files (paper: 10000)."""
    data_mode: Literal["packed", "stories"] = "packed"
    """packed: windows across story boundaries; stories: one story per row, padded."""
    seq_len: AutoCount = None
    """Tokens per training sequence."""
    loader_threads: Threads = 2
    """Threads decompressing token shards."""
    cpu_threads: Annotated[Threads | None, AUTO] = None
    """torch intra-op threads on CPU."""
    demo_num_stories: Count = 4000
    """Stories in the built-in demo corpus (used when --data is none)."""
    # -- optimisation
    batch_size: Count = 32
    """Sequences per micro-batch per process."""
    grad_accum: Count = 1
    """Micro-batches per optimiser step."""
    max_steps: Count = 10000
    """Optimiser steps of the whole run (raise it with --resume to extend a run)."""
    lr_decay_steps: AutoCount = None
    """The cosine reaches min-lr at this step, then stays at min-lr."""
    lr: Annotated[FiniteFloat, Field(gt=0, le=MAX_LR)] = 1e-3
    """Peak learning rate (min-lr follows it, 0.1 x lr, unless min-lr is given too)."""
    min_lr: Annotated[FiniteFloat, Field(ge=0)] = 1e-4
    """Learning rate at the end of the cosine."""
    warmup_steps: Annotated[Whole, Field(ge=0)] = 200
    """Linear warm-up steps."""
    weight_decay: Annotated[FiniteFloat, Field(ge=0)] = 0.1
    """AdamW weight decay (not on biases, norms and embeddings)."""
    beta1: Annotated[FiniteFloat, Field(ge=0, lt=1)] = 0.9
    """AdamW beta1."""
    beta2: Annotated[FiniteFloat, Field(ge=0, lt=1)] = 0.95
    """AdamW beta2."""
    grad_clip: Annotated[FiniteFloat, Field(ge=0)] = 1.0
    """Clip the gradient norm to this (0 disables clipping)."""
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """Autocast dtype; auto: bf16 on sm_80+, fp16 on sm_7x, fp32 on CPU."""
    compile: Annotated[bool | None, AUTO] = None
    """torch.compile the model."""
    max_bad_steps: Count = 10
    """Abort after this many steps in a row with a non-finite loss or gradients."""
    # -- the run
    out: Annotated[str | None, AUTO] = None
    """The run folder (checkpoints, metrics, config.json)."""
    resume: bool = False
    """Continue the newest checkpoint in --out bit-exactly (flags given with it are the only changes)."""
    seed: Whole = 0
    """Seed of the initial weights, the data order and the demo corpus."""
    device: Annotated[str, AfterValidator(_device)] = "auto"
    """auto, cpu, cuda, cuda:N or mps (under torchrun: each process its local rank's GPU)."""
    log_every: Count = 10
    """Steps between log lines."""
    eval_every: Count = 500
    """Steps between evaluations (validation loss and a sample story)."""
    eval_batches: Count = 20
    """Validation batches per evaluation."""
    ckpt_every: Count = 500
    """Steps between checkpoints."""
    keep_last: Count = 3
    """Checkpoints kept (older ones are deleted)."""
    sample_prompt: str = "Once upon a time"
    """The prompt of the story shown at each evaluation."""
    sample_max_new_tokens: Annotated[Whole, Field(ge=0)] = 120
    """New tokens of that story (0: no story)."""
    display: Literal["auto", "rich", "plain"] = "auto"
    """Progress display; auto: rich on a terminal, plain lines otherwise."""
    tensorboard: bool = True
    """Also write TensorBoard scalars (when tensorboard is installed)."""

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.min_lr > self.lr:
            raise Conflict(("min_lr", "lr"), f"min_lr={self.min_lr} must be <= lr={self.lr}")
        if self.lr * self.weight_decay > MAX_LR_TIMES_WEIGHT_DECAY:
            raise Conflict(
                ("lr", "weight_decay"),
                f"lr={self.lr} x weight_decay={self.weight_decay} must be <= {MAX_LR_TIMES_WEIGHT_DECAY:g}: AdamW's "
                f"decay step multiplies the weights by (1 - lr x weight_decay), which would flip and grow them",
            )
        if self.resume and not self.out:
            raise Conflict(("resume", "out"), "--resume needs --out=<the run folder to continue>")
        # Resuming, the weights come from the checkpoint and the data are prepared: a since-moved tokenizer file or
        # Hugging Face folder must not stop the run.
        if not self.resume and not (
            self.tokenizer in PRETRAINED or self.tokenizer in ALIASES or Path(self.tokenizer).exists()
        ):
            raise Conflict(
                ("tokenizer",),
                f"tokenizer={self.tokenizer!r} is neither a known name ({', '.join([*PRETRAINED, *ALIASES])}) "
                f"nor an existing file or folder",
            )
        for path in self.data.split(",") if self.data else []:  # (checked on resume too: --data may have moved)
            if not Path(path).exists():
                raise Conflict(("data",), f"data={self.data}: {path} does not exist")
        if self.init_from_hf and not self.resume and not (Path(self.init_from_hf) / "config.json").is_file():
            raise Conflict(
                ("init_from_hf",),
                f"init_from_hf={self.init_from_hf}: no config.json there (expected a Hugging Face "
                f"GPTNeoForCausalLM folder)",
            )
        try:  # the model's shape, with a placeholder vocabulary (the real one comes from the tokenizer)
            context = self.gpt_neo_config(vocab_size=64).max_position_embeddings
        except ValueError as exc:
            raise Conflict(SHAPE_KEYS, str(exc).removeprefix("model config: ")) from None
        if (self.seq_len or 0) > context and not self.init_from_hf:  # Hugging Face weights: their own context
            raise Conflict(
                ("seq_len", "context", "preset"),
                f"seq_len={self.seq_len} exceeds the model's context of {context} (set --context)",
            )
        return self

    def gpt_neo_config(self, vocab_size: int) -> GPTNeoConfig:
        """The model's shape: the preset's, with the fields given here, for a tokenizer of ``vocab_size``.
        (Not ``model_config``, as before TrainConfig was a pydantic model: pydantic reserves that name.)"""
        overrides = {
            k: v
            for k, v in dict(
                hidden_size=self.hidden_size,
                num_layers=self.num_layers,
                num_heads=self.num_heads,
                max_position_embeddings=self.context,
                window_size=self.window_size,
                dropout=self.dropout,
            ).items()
            if v is not None
        }
        base = dict(PRESETS[self.preset])
        if "num_layers" in overrides:  # the alternating pattern follows the new depth
            base.pop("attention_layers", None)
        return GPTNeoConfig(**{**base, **overrides, "vocab_size": vocab_size})


def none_word(name: str) -> str:
    """How a field's None is written: "none" for the paths, "auto" (chosen for you) for the rest."""
    return "none" if UNSET in TrainConfig.model_fields[name].metadata else "auto"
