"""``tinystories-train``: train a GPT-Neo on token shards, safely and resumably.

    tinystories-train                                  # the offline demo (see README "Training")
    tinystories-train --preset=33M --data=data/ts --out_dir=runs/33m
    tinystories-train my.toml --lr=3e-4 --dtype=bf16   # preset + TOML + overrides, in that order
    torchrun --nproc_per_node=8 -m tinystories.train --preset=33M --data=data/ts
    tinystories-train --out_dir=runs/33m --resume      # continue the newest checkpoint, bit-exactly

Configuration is one dataclass, :class:`TrainConfig`, filled from (lowest to highest priority) its
defaults, the preset's training defaults, an optional TOML file and ``--key=value`` flags; every value is
checked before anything is allocated. Each step: ``grad_accum`` micro-batches forward/backward (under
autocast for fp16/bf16), gradient clipping, an AdamW step on a warmup + cosine schedule. A step whose
loss or gradients are not finite is skipped and counted; too many in a row abort the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import torch
import torch.nn.functional as F

from tinystories.checkpoint import (checkpoint_path, list_checkpoints, read_checkpoint, save_checkpoint,
                                    tokenizer_to_json)
from tinystories.model import PRESETS, GPTNeo, GPTNeoConfig, flops_per_token, model_summary

DEMO_NOTICE = ("DEMO DATA: template-generated stories from tinystories.story_templates, NOT TinyStories. "
               "Train on real data with --data (see README, Training).")


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
    impl: str = "torch"  # "torch" | "fused" (Triton kernels on CUDA)
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
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 200
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    dtype: str = "auto"  # "auto" | "fp32" | "fp16" | "bf16"
    compile: bool = False
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
        overrides = {k: v for k, v in dict(hidden_size=self.hidden_size, num_layers=self.num_layers,
                                           num_heads=self.num_heads, max_position_embeddings=self.context,
                                           window_size=self.window_size, dropout=self.dropout).items()
                     if v is not None}
        base = dict(PRESETS[self.preset])
        if "num_layers" in overrides:  # the alternating pattern follows the new depth
            base.pop("attention_layers", None)
        return GPTNeoConfig(**{**base, **overrides, "vocab_size": vocab_size})


# Training defaults per preset (the paper's optimiser settings are not all published; these are ours).
PRESET_TRAINING: dict[str, dict[str, Any]] = {
    # One CPU thread: the demo's 128-wide matmuls gain little from more, and one thread cannot be
    # starved by oversubscription (on a busy 2-core box: 2,200 tokens/s with 1 thread, 190 with 2).
    "demo": dict(batch_size=8, seq_len=128, max_steps=300, lr=3e-3, min_lr=3e-4, warmup_steps=30,
                 eval_every=100, eval_batches=8, ckpt_every=100, log_every=10, sample_tokens=100,
                 cpu_threads=1, loader_threads=1),
}
CHOICES = {"impl": ("torch", "fused"), "data_mode": ("packed", "stories"), "dtype": ("auto", "fp32", "fp16", "bf16"),
           "display": ("auto", "rich", "plain")}


class ConfigError(ValueError):
    """A bad configuration value; the message names the key, the value and where it came from."""


class TrainingAborted(RuntimeError):
    """The run cannot usefully continue (e.g. too many non-finite steps in a row)."""


def _field_types() -> dict[str, tuple[type, bool]]:
    """field -> (base type, optional?)"""
    out = {}
    for name, hint in get_type_hints(TrainConfig).items():
        args = [a for a in get_args(hint) if a is not type(None)]
        optional = get_origin(hint) is not None and type(None) in get_args(hint)
        out[name] = (args[0] if args else hint, optional)
    return out


def _coerce(key: str, value: Any, source: str) -> Any:
    types = _field_types()
    if key not in types:
        close = difflib.get_close_matches(key, types, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{source}: unknown config key {key!r}{hint}")
    kind, optional = types[key]
    if isinstance(value, str) and not (kind is str):
        text = value.strip()
        if optional and text.lower() in ("none", "null", ""):
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


def load_config(toml_path: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults < preset training defaults < TOML < overrides, validated (raises ConfigError)."""
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
    values: dict[str, Any] = {}
    for source, table in layers:
        for key, value in table.items():
            values[key.replace("-", "_")] = _coerce(key.replace("-", "_"), value, source)
    preset = values.get("preset", TrainConfig.preset)
    if preset not in PRESETS:
        raise ConfigError(f"preset={preset!r} is unknown; choose one of {', '.join(PRESETS)}")
    merged = {**PRESET_TRAINING.get(preset, {}), **values}
    config = TrainConfig(**merged)
    validate_config(config)
    return config


def validate_config(c: TrainConfig) -> None:
    for key, choices in CHOICES.items():
        if getattr(c, key) not in choices:
            raise ConfigError(f"{key}={getattr(c, key)!r} must be one of {', '.join(choices)}")
    positive = ["batch_size", "grad_accum", "max_steps", "log_every", "eval_every", "eval_batches", "ckpt_every",
                "keep_last", "max_bad_steps", "loader_threads", "demo_stories"]
    for key in positive:
        if getattr(c, key) <= 0:
            raise ConfigError(f"{key}={getattr(c, key)} must be positive")
    for key in ("hidden_size", "num_layers", "num_heads", "context", "window_size", "seq_len", "vocab_top_k",
                "cpu_threads"):
        if getattr(c, key) is not None and getattr(c, key) <= 0:
            raise ConfigError(f"{key}={getattr(c, key)} must be positive")
    if c.lr <= 0 or c.min_lr < 0 or c.min_lr > c.lr:
        raise ConfigError(f"need 0 <= min_lr <= lr and lr > 0, got lr={c.lr}, min_lr={c.min_lr}")
    if c.warmup_steps < 0 or c.weight_decay < 0 or c.grad_clip < 0 or c.sample_tokens < 0:
        raise ConfigError("warmup_steps, weight_decay, grad_clip and sample_tokens must be >= 0")
    if not (0 <= c.beta1 < 1 and 0 <= c.beta2 < 1):
        raise ConfigError(f"beta1={c.beta1}, beta2={c.beta2} must be in [0, 1)")
    if c.resume and not c.out_dir:
        raise ConfigError("--resume needs --out_dir=<the run directory to continue>")
    if c.init_from_hf and not (Path(c.init_from_hf) / "config.json").is_file():
        raise ConfigError(f"init_from_hf={c.init_from_hf}: no config.json there (expected a Hugging Face "
                          f"GPTNeoForCausalLM directory)")
    for path in (c.data.split(",") if c.data else []):
        if not Path(path).exists():
            raise ConfigError(f"data={c.data}: {path} does not exist")
    # The model shape, with a placeholder vocabulary (the real one comes from the tokenizer).
    try:
        model = c.model_config(vocab_size=64)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    seq_len = c.seq_len or model.max_position_embeddings
    if seq_len > model.max_position_embeddings:
        raise ConfigError(f"seq_len={seq_len} exceeds the model's context of {model.max_position_embeddings} "
                          f"(set --context)")


# -- devices, precision, distributed -----------------------------------------------------------------
# Dense peak FLOP/s per device and dtype, for MFU. Matched by substring of the device name, first hit wins.
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", dict(bf16=989e12, fp16=989e12, fp32=67e12)),
    ("H100 PCIe", dict(bf16=756e12, fp16=756e12, fp32=51e12)),
    ("H100", dict(bf16=989e12, fp16=989e12, fp32=67e12)),
    ("A100", dict(bf16=312e12, fp16=312e12, fp32=19.5e12)),
    ("L40S", dict(bf16=362e12, fp16=362e12, fp32=91.6e12)),
    ("L4", dict(bf16=121e12, fp16=121e12, fp32=30.3e12)),
    ("A10", dict(bf16=125e12, fp16=125e12, fp32=31.2e12)),
    ("V100", dict(fp16=125e12, fp32=15.7e12)),
    ("T4", dict(fp16=65e12, fp32=8.1e12)),
    ("RTX 4090", dict(bf16=165e12, fp16=165e12, fp32=82.6e12)),
    ("RTX 3090", dict(bf16=71e12, fp16=71e12, fp32=35.6e12)),
]


def peak_flops(device: torch.device, dtype: str) -> float | None:
    """Peak FLOP/s of one device for MFU; $TINYSTORIES_PEAK_FLOPS overrides; None when unknown (CPUs)."""
    if os.environ.get("TINYSTORIES_PEAK_FLOPS"):
        return float(os.environ["TINYSTORIES_PEAK_FLOPS"])
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, table in PEAK_FLOPS:
        if key in name:
            return table.get(dtype)
    return None


def resolve_device(spec: str, local_rank: int) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={spec!r} but CUDA is not available")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    return device


def resolve_dtype(spec: str, device: torch.device) -> str:
    if spec == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if spec == "fp16" and device.type != "cuda":
        raise ConfigError("dtype=fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    return spec


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str) -> Dist:
    """Join the torchrun process group when launched by torchrun (nccl on CUDA, gloo on CPU)."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return Dist()
    import torch.distributed as dist

    d = Dist(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
    use_cuda = device_spec.startswith("cuda") or (device_spec == "auto" and torch.cuda.is_available())
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return d


# -- data --------------------------------------------------------------------------------------------
def prepare_demo_data(cache_dir: Path, n_stories: int, seed: int, progress: bool) -> Path:
    """Shards of the built-in demo corpus (template stories + a 2048-token BPE trained on them), cached."""
    from tinystories.data import prepare
    from tinystories.story_templates import generate_stories
    from tinystories.tokenizer import Tokenizer

    data_dir = cache_dir / f"demo-data-{n_stories}-{seed}"
    if (data_dir / "index.json").is_file():
        return data_dir
    print(f"[demo] generating {n_stories} template stories and a 2048-token BPE in {data_dir}", flush=True)
    stories = generate_stories(n_stories, seed=seed)
    build = data_dir.with_name(data_dir.name + f".building-{os.getpid()}")
    build.mkdir(parents=True, exist_ok=True)
    text_path = build / "demo_stories.txt"
    text_path.write_text("\n<|endoftext|>\n".join(stories) + "\n<|endoftext|>\n", encoding="utf-8")
    tokenizer = Tokenizer.train(stories, vocab_size=2048)
    prepare([text_path], build / "shards", tokenizer, val_fraction=0.05, progress=progress)
    (build / "shards" / "DEMO_DATA.txt").write_text(DEMO_NOTICE + "\n")
    os.replace(build / "shards", data_dir)  # atomic: a half-built dataset is never picked up
    text_path.unlink()
    build.rmdir()
    return data_dir


def resolve_data(config: TrainConfig, run_dir: Path, dist: Dist) -> Path:
    """The shard directory to train on, preparing it (on rank 0) when needed."""
    if config.data is None:
        cache = run_dir.parent
        if dist.main:
            prepare_demo_data(cache, config.demo_stories, config.seed, progress=False)
        _barrier(dist)
        return cache / f"demo-data-{config.demo_stories}-{config.seed}"
    paths = [Path(p) for p in config.data.split(",")]
    if len(paths) == 1 and paths[0].is_dir():
        if not (paths[0] / "index.json").is_file():
            raise ConfigError(f"data={config.data}: directory has no index.json (prepare it with "
                              f"`tinystories data prepare`, or pass .txt/.jsonl files)")
        return paths[0]
    for p in paths:
        if not p.is_file():
            raise ConfigError(f"data={config.data}: {p} does not exist")
    out = run_dir / "data"
    if dist.main and not (out / "index.json").is_file():
        from tinystories.data import prepare

        print(f"preparing shards of {', '.join(map(str, paths))} in {out} (tokenizer {config.tokenizer})", flush=True)
        prepare(paths, out, config.tokenizer, top_k=config.vocab_top_k, instruct=config.preset.endswith("-instruct"))
    _barrier(dist)
    return out


def _to_device(batch, device: torch.device) -> torch.Tensor:
    """A loader array (numpy, or a pinned tensor with pin_memory=True) on ``device``."""
    tensor = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(batch)
    return tensor.to(device, non_blocking=True)


def _barrier(dist: Dist) -> None:
    if dist.enabled:
        torch.distributed.barrier()


# -- schedule, optimizer -----------------------------------------------------------------------------
def learning_rate(step: int, c: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr`` at ``max_steps``."""
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    progress = min(1.0, (step - c.warmup_steps) / max(1, c.max_steps - c.warmup_steps))
    return c.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (c.lr - c.min_lr)


def make_optimizer(model: GPTNeo, c: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # Weight decay on matmul weights and embeddings only, never on biases or LayerNorms.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": c.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"  # one kernel for the whole update
    return torch.optim.AdamW(groups, lr=c.lr, betas=(c.beta1, c.beta2), fused=fused)


# -- progress display --------------------------------------------------------------------------------
class Progress:
    """Rich live progress on a terminal (rich imported only then), plain lines otherwise."""

    def __init__(self, total: int, start: int, mode: str, enabled: bool) -> None:
        self.enabled = enabled
        use_rich = enabled and (mode == "rich" or (mode == "auto" and sys.stdout.isatty()))
        self._bar = None
        if use_rich:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
                TimeRemainingColumn

            self._bar = RichProgress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[stats]}"), TimeRemainingColumn())
            self._task = self._bar.add_task("train", total=total, completed=start, stats="")
            self._bar.start()

    def update(self, step: int, stats: str, line: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=step, stats=stats)
        else:
            print(line, flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


class Metrics:
    """metrics.jsonl (appended, flushed per record) and TensorBoard scalars when tensorboard is installed."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self._file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8") if enabled else None
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                pass  # tensorboard is optional; metrics.jsonl has everything

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self._file:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


# -- the run -----------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_version": random.getstate()[0], "python_gauss": random.getstate()[2]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def sample_story(model: GPTNeo, tokenizer, prompt: str, max_tokens: int, device: torch.device, seed: int) -> str:
    ids = tokenizer.encode(prompt, allowed_special="all") if prompt else [tokenizer.eot_token]
    x = torch.tensor([ids], dtype=torch.long, device=device)
    max_tokens = min(max_tokens, model.config.max_position_embeddings - len(ids))
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = model.generate(x, max_tokens, temperature=0.8, top_k=50, eos_token=tokenizer.eot_token,
                         generator=generator)[0].tolist()
    model.train(was_training)
    new = out[len(ids):]
    if tokenizer.eot_token in new:
        new = new[:new.index(tokenizer.eot_token)]
    return tokenizer.decode(ids + new) if prompt else tokenizer.decode(new)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data_dir: Path, c: TrainConfig, seq_len: int, dist: Dist,
             device: torch.device, autocast) -> float:
    from tinystories.data import TokenLoader

    model.eval()
    loader = TokenLoader(data_dir, split="val", batch_size=c.batch_size, seq_len=seq_len, mode=c.data_mode,
                         seed=c.seed, rank=dist.rank, world_size=dist.world_size, shuffle=False, loop=False,
                         threads=c.loader_threads)
    total = torch.zeros(2, dtype=torch.float64, device=device)  # sum of losses, number of targets
    for i, (x, y) in enumerate(loader):
        if i >= c.eval_batches:
            break
        x, y = _to_device(x, device), _to_device(y, device)
        with autocast:
            logits = model(x).logits
        total[0] += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100,
                                    reduction="sum").double()
        total[1] += (y != -100).sum()
    if dist.enabled:
        torch.distributed.all_reduce(total)
    model.train()
    if total[1] == 0:
        raise RuntimeError(f"{data_dir}: the validation split is empty; prepare the data with val_fraction > 0")
    return float(total[0] / total[1])


def train(c: TrainConfig) -> Path:
    """Run (or resume) training; returns the run directory."""
    dist = init_distributed(c.device)
    try:
        return _train(c, dist)
    finally:
        if dist.enabled:
            torch.distributed.destroy_process_group()


def _train(c: TrainConfig, dist: Dist) -> Path:
    device = resolve_device(c.device, dist.local_rank)
    dtype = resolve_dtype(c.dtype, device)
    if c.cpu_threads is not None:
        torch.set_num_threads(c.cpu_threads)
    run_dir = Path(c.out_dir or f"runs/{c.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    existing = list_checkpoints(run_dir)
    if existing and not c.resume:
        raise ConfigError(f"{run_dir} already holds checkpoints; pass --resume to continue it or choose a new "
                          f"--out_dir")
    if c.resume and not existing:
        raise ConfigError(f"--resume: {run_dir} has no checkpoints to resume from")
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    _barrier(dist)
    say = print if dist.main else (lambda *a, **k: None)

    from tinystories.data import TokenLoader, load_dataset_tokenizer

    data_dir = resolve_data(c, run_dir, dist)
    tokenizer = load_dataset_tokenizer(data_dir)
    torch.manual_seed(c.seed)  # the same initial weights on every rank and every run of this config
    random.seed(c.seed)
    if c.init_from_hf:
        from tinystories.hf import load_hf_model

        model = load_hf_model(c.init_from_hf)
        if model.config.vocab_size != tokenizer.n_vocab:
            raise ConfigError(f"init_from_hf={c.init_from_hf}: the model's vocab_size {model.config.vocab_size} "
                              f"differs from the data's tokenizer ({tokenizer.n_vocab} tokens)")
    else:
        model = GPTNeo(c.model_config(tokenizer.n_vocab))
    mc = model.config
    seq_len = c.seq_len or mc.max_position_embeddings
    if seq_len > mc.max_position_embeddings:
        raise ConfigError(f"seq_len={seq_len} exceeds the model's context of {mc.max_position_embeddings}")
    model.impl = c.impl
    model.to(device).train()
    optimizer = make_optimizer(model, c, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "fp16")
    autocast = (torch.autocast(device.type, dtype={"fp16": torch.float16, "bf16": torch.bfloat16}[dtype])
                if dtype != "fp32" else nullcontext())
    loader = TokenLoader(data_dir, split="train", batch_size=c.batch_size, seq_len=seq_len, mode=c.data_mode,
                         seed=c.seed, rank=dist.rank, world_size=dist.world_size, threads=c.loader_threads,
                         pin_memory=device.type == "cuda", expected_fingerprint=tokenizer.fingerprint)

    step, counters = 0, {"skipped_steps": 0, "bad_in_a_row": 0, "tokens": 0}
    if c.resume:
        ckpt = read_checkpoint(existing[-1])
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        loader.load_state(ckpt["loader"])
        set_rng_state(ckpt["rng"])
        step, counters = ckpt["step"], ckpt["counters"]
        say(f"resumed {existing[-1]} at step {step}")

    tokens_per_step = c.batch_size * seq_len * c.grad_accum * dist.world_size
    flops_step = flops_per_token(mc, seq_len) * tokens_per_step
    peak = peak_flops(device, dtype)
    tokenizer_json = tokenizer_to_json(tokenizer)
    if dist.main:
        (run_dir / "config.json").write_text(json.dumps(
            {"train": dataclasses.asdict(c), "model": mc.to_dict(), "data": str(data_dir), "dtype": dtype,
             "world_size": dist.world_size}, indent=2) + "\n")
        say(f"{model_summary(model)}\ndata {data_dir} | {tokens_per_step:,} tokens/step | device {device} "
            f"{dtype} x{dist.world_size} | run dir {run_dir}")
        if c.data is None:
            say(f"[demo] {DEMO_NOTICE}")

    train_model: torch.nn.Module = model
    if c.compile:
        train_model = torch.compile(model)
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(train_model, device_ids=[device.index] if device.type == "cuda" else None)

    metrics = Metrics(run_dir, dist.main, c.tensorboard)
    progress = Progress(c.max_steps, step, c.display, dist.main)

    def save(at_step: int) -> None:
        if not dist.main:
            return
        payload = {"step": at_step, "model": model.state_dict(), "model_config": mc.to_dict(),
                   "train_config": dataclasses.asdict(c), "tokenizer_json": tokenizer_json,
                   "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                   "loader": loader.state(), "counters": dict(counters)}
        save_checkpoint(payload, checkpoint_path(run_dir, at_step), keep_last=c.keep_last)

    t_last, steps_since = time.perf_counter(), 0
    try:
        while step < c.max_steps:
            lr = learning_rate(step, c)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(c.grad_accum):
                x, y = (_to_device(a, device) for a in next(loader))
                last = micro == c.grad_accum - 1
                sync = train_model.no_sync() if dist.enabled and not last else nullcontext()
                with sync, autocast:
                    loss = train_model(x, y, return_logits=False).loss / c.grad_accum
                scaler.scale(loss).backward()
                loss_sum += loss.detach()
            if dist.enabled:
                torch.distributed.all_reduce(loss_sum, op=torch.distributed.ReduceOp.AVG)
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip if c.grad_clip > 0 else
                                                       float("inf"))
            loss_value = float(loss_sum)
            finite = math.isfinite(loss_value) and (bool(torch.isfinite(grad_norm)) or dtype == "fp16")
            if finite:
                scaler.step(optimizer)  # fp16: the scaler itself skips steps with inf gradients
                counters["bad_in_a_row"] = 0
            else:
                counters["skipped_steps"] += 1
                counters["bad_in_a_row"] += 1
                progress.message(f"step {step + 1}: non-finite loss ({loss_value}) or gradient norm "
                                 f"({float(grad_norm)}); step skipped ({counters['bad_in_a_row']} in a row)")
                if counters["bad_in_a_row"] >= c.max_bad_steps:
                    raise TrainingAborted(
                        f"aborting: {counters['bad_in_a_row']} consecutive steps with a non-finite loss or "
                        f"gradients (last loss {loss_value}, step {step + 1}). Lower --lr, use --dtype=bf16/fp32, or "
                        f"check the data; the last good checkpoint is in {run_dir / 'checkpoints'}")
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            counters["tokens"] += tokens_per_step
            steps_since += 1

            if step % c.log_every == 0 or step == c.max_steps:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                dt = (now - t_last) / steps_since
                tok_s = tokens_per_step / dt
                mfu = flops_step / dt / (peak * dist.world_size) if peak else None
                eta = dt * (c.max_steps - step)
                record = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm),
                          "tokens_per_s": tok_s, "tokens": counters["tokens"], "skipped_steps": counters["skipped_steps"]}
                if mfu is not None:
                    record["mfu"] = mfu
                metrics.write(record)
                mfu_text = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
                stats = f"loss {loss_value:.4f} | lr {lr:.2e} | {tok_s:,.0f} tok/s | MFU {mfu_text}"
                progress.update(step, stats, f"step {step}/{c.max_steps} | {stats} | ETA {eta:.0f}s")
                t_last, steps_since = time.perf_counter(), 0

            if step % c.eval_every == 0 or step == c.max_steps:
                val = evaluate(train_model, data_dir, c, seq_len, dist, device, autocast)
                record = {"step": step, "val_loss": val, "val_ppl": math.exp(min(val, 50.0))}
                if dist.main:
                    story = sample_story(model, tokenizer, c.sample_prompt, c.sample_tokens, device, c.seed + step)
                    record["sample"] = story
                    one_line = " ".join(story.split())
                    progress.message(f"step {step}: val loss {val:.4f} | ppl {record['val_ppl']:.2f} | "
                                     f"sample: {one_line}")
                metrics.write(record)
                t_last = time.perf_counter()  # evaluation time is not training throughput

            if step % c.ckpt_every == 0 or step == c.max_steps:
                save(step)
                t_last = time.perf_counter()
    finally:
        progress.close()
        metrics.close()
    if dist.main:
        story = sample_story(model, tokenizer, c.sample_prompt, c.sample_tokens, device, c.seed)
        say(f"\nA story by the model ({run_dir}):\n\n{story}\n")
        say(f"checkpoint: {checkpoint_path(run_dir, step)}")
    return run_dir


# -- command line --------------------------------------------------------------------------------------
def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.allow_abbrev = False  # a mistyped key must be an error, not a silent prefix match
    parser.description = (parser.description or "") + " Every TrainConfig field is a --key=value flag."
    parser.add_argument("config", nargs="?", help="optional TOML file of config values")
    for f in dataclasses.fields(TrainConfig):
        kind, _ = _field_types()[f.name]
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        extra = dict(nargs="?", const="true") if kind is bool else {}
        parser.add_argument(*names, dest=f.name, default=argparse.SUPPRESS, metavar=kind.__name__.upper(),
                            help=f"(default: {f.default!r})", **extra)


def run_cli(args: argparse.Namespace) -> int:
    values = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    try:
        config = load_config(args.config, values)
        train(config)
    except ConfigError as exc:
        print(f"tinystories-train: error: {exc}", file=sys.stderr)
        return 2
    except TrainingAborted as exc:
        print(f"tinystories-train: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tinystories-train", description="Train a GPT-Neo (TinyStories).")
    add_cli_arguments(parser)
    return run_cli(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
