"""The trainer's configuration: one dataclass, filled from (lowest to highest priority) its defaults, the
preset's training defaults, an optional TOML file and ``--key=value`` flags, and checked before anything is
allocated (a bad key, type, size or a non-finite number is a :class:`ConfigError` naming the key, the value
and its source). With ``--resume``, the run's saved ``config.json`` takes the place of the defaults and the
preset: only the keys given in the TOML file or on the command line change (see :mod:`tinystories.train.resume`).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from tinystories.data.loader import MAX_THREADS
from tinystories.model.config import PRESETS, GPTNeoConfig
from tinystories.runtime.errors import ConfigError
from tinystories.tokenizer.files import ALIASES, PRETRAINED


@dataclass
class TrainConfig:
    # model
    preset: str = "demo"
    hidden_size: int | None = None  # None: the preset's
    num_layers: int | None = None
    num_heads: int | None = None
    context: int | None = None  # max_position_embeddings
    window_size: int | None = None
    dropout: float | None = None
    init_from_hf: str | None = None  # a GPTNeoForCausalLM directory to start from
    impl: str = "auto"  # "auto" (from the GPU, see tinystories.runtime.device) | "torch" | "fused" | "hybrid"
    # data
    data: str | None = None  # a prepared shard directory, or .txt/.jsonl file(s) (comma-separated) to prepare
    tokenizer: str = "gpt2"  # for --data files: a tokenizer spec (see tinystories.tokenizer.resolve_tokenizer)
    vocab_top_k: int | None = None  # restrict the tokenizer to its top-k tokens when preparing (paper: 10000)
    data_mode: str = "packed"  # "packed" | "stories"
    seq_len: int | None = None  # None: the model's context
    loader_threads: int = 2
    cpu_threads: int | None = None  # torch intra-op threads on CPU; None: torch's default (all cores)
    demo_stories: int = 4000  # size of the built-in demo corpus (used when data is None)
    # optimisation
    batch_size: int = 32  # sequences per micro-batch per process
    grad_accum: int = 1
    max_steps: int = 10000
    lr_decay_steps: int | None = None  # the cosine reaches min_lr here (None: max_steps), then stays at min_lr
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 200
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    dtype: str = "auto"  # "auto" | "fp32" | "fp16" | "bf16"
    compile: bool | None = None  # None ("auto"): on for GPUs with Triton, off on CPU
    max_bad_steps: int = 10  # abort after this many non-finite steps in a row
    # bookkeeping
    out_dir: str | None = None  # None: runs/<preset>-<timestamp>
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    log_every: int = 10
    eval_every: int = 500
    eval_batches: int = 20
    ckpt_every: int = 500
    keep_last: int = 3
    sample_prompt: str = "Once upon a time"
    sample_tokens: int = 120
    display: str = "auto"  # "auto" (rich on a terminal) | "rich" | "plain"
    tensorboard: bool = True

    def model_config(self, vocab_size: int) -> GPTNeoConfig:
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


# Training defaults per preset (the paper's optimiser settings are not all published; these are ours).
PRESET_TRAINING: dict[str, dict[str, Any]] = {
    # One CPU thread: the demo's 128-wide matmuls gain little from more, and one thread cannot be
    # starved by oversubscription (on a busy 2-core box: 2,200 tokens/s with 1 thread, 190 with 2).
    "demo": dict(
        batch_size=8,
        seq_len=128,
        max_steps=300,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=30,
        eval_every=100,
        eval_batches=8,
        ckpt_every=100,
        log_every=10,
        sample_tokens=100,
        cpu_threads=1,
        loader_threads=1,
    ),
}
# --data without --preset (or a shape, or --init_from_hf) would silently train the demo's architecture on real data.
SHAPE_GIVEN_WITHOUT_PRESET = ("hidden_size", "num_layers")
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
# Fine-tuning from Hugging Face weights (--init_from_hf): the paper's context, whatever the preset or the HF
# config says (the TinyStories models were trained at 512 though their config allows 2048).
FINETUNE_TRAINING: dict[str, Any] = dict(seq_len=512)
MIN_LR_RATIO = 0.1  # min_lr follows a given lr unless min_lr is given too
CHOICES = {
    "impl": ("auto", "torch", "fused", "hybrid"),
    "data_mode": ("packed", "stories"),
    "dtype": ("auto", "fp32", "fp16", "bf16"),
    "display": ("auto", "rich", "plain"),
}


def field_types() -> dict[str, tuple[type, bool]]:
    """field -> (base type, optional?)"""
    out = {}
    for name, hint in get_type_hints(TrainConfig).items():
        args = [a for a in get_args(hint) if a is not type(None)]
        optional = get_origin(hint) is not None and type(None) in get_args(hint)
        out[name] = (args[0] if args else hint, optional)
    return out


def _coerce(key: str, value: Any, source: str) -> Any:
    types = field_types()
    if key not in types:
        close = difflib.get_close_matches(key, types, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{source}: unknown config key {key!r}{hint}")
    kind, optional = types[key]
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        if optional and text.lower() in ("none", "null", "", "auto"):  # None means "chosen for you"
            return None
        try:
            if kind is bool:
                if text.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError
                return text.lower() in ("1", "true", "yes", "on")
            if kind is int:  # accept 10000, 1e4, 10_000
                number = float(text)
                if not number.is_integer():
                    raise ValueError
                return int(number)
            return kind(text)
        except ValueError:
            raise ConfigError(f"{source}: {key}={value!r} is not a valid {kind.__name__}") from None
    if value is None and optional:
        return None
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise ConfigError(f"{source}: {key}={value!r} must be of type {kind.__name__}, not {type(value).__name__}")
    return value


def saved_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The training config a run saved in its ``config.json`` (coerced and checked), or None without one."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return None
    try:
        table = json.loads(path.read_text(encoding="utf-8"))["train"]
        if not isinstance(table, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            f'{path}: not a tinystories-train config.json (no "train" table); move it away or start a new --out_dir'
        ) from None
    return {key: _coerce(key, value, str(path)) for key, value in table.items()}


def load_config(toml_path: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults < preset training defaults < TOML < overrides, validated (raises ConfigError). With ``resume``,
    the run's saved config.json replaces the defaults and the preset's, so only the given keys change."""
    layers: list[tuple[str, dict[str, Any]]] = []
    if toml_path:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise ConfigError(f"reading {toml_path} needs Python >= 3.11 (tomllib); pass --key=value flags") from None
        try:
            with open(toml_path, "rb") as f:
                table = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {toml_path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{toml_path}: invalid TOML ({exc})") from None
        layers.append((toml_path, table))
    layers.append(("command line", dict(overrides or {})))
    given: dict[str, Any] = {}
    for source, table in layers:
        for key, value in table.items():
            given[key.replace("-", "_")] = _coerce(key.replace("-", "_"), value, source)
    saved = saved_config(given["out_dir"]) if given.get("resume") and given.get("out_dir") else None
    values = {**(saved or {}), **given}
    preset = values.get("preset", TrainConfig.preset)
    if preset not in PRESETS:
        raise ConfigError(f"preset={preset!r} is unknown; choose one of {', '.join(PRESETS)}")
    if (
        values.get("data")
        and "preset" not in values
        and not values.get("init_from_hf")
        and not all(k in values for k in SHAPE_GIVEN_WITHOUT_PRESET)
    ):
        sizes = ", ".join(p for p in PRESETS if p != "demo" and not p.endswith("-instruct"))
        raise ConfigError(
            f"--data needs a model size: --preset=SIZE with SIZE one of {sizes} (the paper's; each "
            f"also as SIZE-instruct), or --hidden_size and --num_layers (other keys from --preset=demo)"
        )
    if "lr" in given and "min_lr" not in given:
        values["min_lr"] = given["lr"] * MIN_LR_RATIO
    defaults = FINETUNE_TRAINING if values.get("init_from_hf") else PRESET_TRAINING.get(preset, {})
    merged = values if saved else {**defaults, **values}  # a saved config is complete
    config = TrainConfig(**merged)
    validate_config(config)
    return config


def validate_config(c: TrainConfig) -> None:
    for f in fields(c):  # nan passes every comparison below, and inf makes no sense for any float setting
        value = getattr(c, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name}={value} must be a finite number")
    for key, choices in CHOICES.items():
        if getattr(c, key) not in choices:
            raise ConfigError(f"{key}={getattr(c, key)!r} must be one of {', '.join(choices)}")
    positive = [
        "batch_size",
        "grad_accum",
        "max_steps",
        "log_every",
        "eval_every",
        "eval_batches",
        "ckpt_every",
        "keep_last",
        "max_bad_steps",
        "loader_threads",
        "demo_stories",
    ]
    for key in positive:
        if getattr(c, key) <= 0:
            raise ConfigError(f"{key}={getattr(c, key)} must be positive")
    for key in (
        "hidden_size",
        "num_layers",
        "num_heads",
        "context",
        "window_size",
        "seq_len",
        "vocab_top_k",
        "cpu_threads",
        "lr_decay_steps",
    ):
        if getattr(c, key) is not None and getattr(c, key) <= 0:
            raise ConfigError(f"{key}={getattr(c, key)} must be positive")
    for key in ("loader_threads", "cpu_threads"):
        if (getattr(c, key) or 0) > MAX_THREADS:
            raise ConfigError(
                f"{key}={getattr(c, key)} is more threads than any machine runs usefully (at most {MAX_THREADS})"
            )
    if not DEVICE.match(c.device):
        raise ConfigError(f"device={c.device!r} must be auto, cpu, cuda, cuda:N or mps")
    # Resuming, the weights come from the checkpoint and the data are prepared: a since-moved tokenizer file or
    # Hugging Face folder must not stop the run.
    if not c.resume and not (c.tokenizer in PRETRAINED or c.tokenizer in ALIASES or Path(c.tokenizer).exists()):
        raise ConfigError(
            f"tokenizer={c.tokenizer!r} is neither a known name ({', '.join([*PRETRAINED, *ALIASES])}) "
            f"nor an existing file or folder"
        )
    if c.lr <= 0 or c.min_lr < 0 or c.min_lr > c.lr:
        raise ConfigError(f"need 0 <= min_lr <= lr and lr > 0, got lr={c.lr}, min_lr={c.min_lr}")
    if c.warmup_steps < 0 or c.weight_decay < 0 or c.grad_clip < 0 or c.sample_tokens < 0:
        raise ConfigError("warmup_steps, weight_decay, grad_clip and sample_tokens must be >= 0")
    if not (0 <= c.beta1 < 1 and 0 <= c.beta2 < 1):
        raise ConfigError(f"beta1={c.beta1}, beta2={c.beta2} must be in [0, 1)")
    if c.resume and not c.out_dir:
        raise ConfigError("--resume needs --out_dir=<the run directory to continue>")
    if c.init_from_hf and not c.resume and not (Path(c.init_from_hf) / "config.json").is_file():
        raise ConfigError(
            f"init_from_hf={c.init_from_hf}: no config.json there (expected a Hugging Face GPTNeoForCausalLM directory)"
        )
    for path in c.data.split(",") if c.data else []:
        if not Path(path).exists():
            raise ConfigError(f"data={c.data}: {path} does not exist")
    # The model shape, with a placeholder vocabulary (the real one comes from the tokenizer).
    try:
        model = c.model_config(vocab_size=64)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    seq_len = c.seq_len or model.max_position_embeddings
    if seq_len > model.max_position_embeddings and not c.init_from_hf:  # HF: its own context
        raise ConfigError(
            f"seq_len={seq_len} exceeds the model's context of {model.max_position_embeddings} (set --context)"
        )
