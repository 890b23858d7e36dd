"""The training run: a run directory, resumable bit-exactly from its newest checkpoint.

Each step is :func:`tinystories.train.step.train_step`; every ``log_every`` steps a metrics record (loss,
lr, tokens/s, MFU) goes to ``metrics.jsonl`` (and TensorBoard when installed), every ``eval_every`` steps
the validation loss and a sampled story, every ``ckpt_every`` steps an atomic checkpoint holding everything
needed to continue (model, optimizer, scaler, RNG and loader states). A step whose loss or gradients are
not finite is skipped and counted; ``max_bad_steps`` in a row abort the run.
"""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tinystories.atomic import atomic_write_json
from tinystories.data import IGNORE_INDEX, TokenLoader, load_dataset_tokenizer
from tinystories.jsonl import JsonlLog
from tinystories.model.checkpoint import checkpoint_path, list_checkpoints, read_checkpoint, save_checkpoint
from tinystories.model.config import flops_per_token
from tinystories.model.generate import generate_texts
from tinystories.model.gpt_neo import GPTNeo, model_summary
from tinystories.model.hf import load_hf_model
from tinystories.progress import Progress
from tinystories.tokenizer import Tokenizer
from tinystories.train.config import ConfigError, TrainConfig
from tinystories.train.device import (Dist, autocast_context, barrier, init_distributed, loader_state_for_rank,
                                      peak_flops, resolve_device, resolve_dtype, to_device)
from tinystories.train.inputs import DEMO_NOTICE, resolve_data
from tinystories.train.step import learning_rate, make_optimizer, train_step


class TrainingAborted(RuntimeError):
    """The run cannot usefully continue (e.g. too many non-finite steps in a row)."""


class Metrics:
    """metrics.jsonl (see :mod:`tinystories.jsonl`) and TensorBoard scalars when tensorboard is installed."""

    def __init__(self, run_dir: Path, tensorboard: bool) -> None:
        self._log = JsonlLog(run_dir / "metrics.jsonl")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                pass  # tensorboard is optional; metrics.jsonl has everything

    def write(self, record: dict[str, Any]) -> None:
        self._log.append(record)
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self._log.close()
        if self._tb is not None:
            self._tb.close()


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


@torch.no_grad()
def evaluate(model: torch.nn.Module, data_dir: Path, c: TrainConfig, seq_len: int, dist: Dist,
             device: torch.device, autocast: AbstractContextManager) -> float:
    """Mean next-token loss over the first ``eval_batches`` batches of the validation split (all ranks)."""
    model.eval()
    loader = TokenLoader(data_dir, split="val", batch_size=c.batch_size, seq_len=seq_len, mode=c.data_mode,
                         seed=c.seed, rank=dist.rank, world_size=dist.world_size, shuffle=False, loop=False,
                         threads=c.loader_threads)
    total = torch.zeros(2, dtype=torch.float64, device=device)  # sum of losses, number of targets
    for i, (x, y) in enumerate(loader):
        if i >= c.eval_batches:
            break
        x, y = to_device(x, device), to_device(y, device)
        with autocast:
            logits = model(x).logits
        total[0] += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX,
                                    reduction="sum").double()
        total[1] += (y != IGNORE_INDEX).sum()
    if dist.enabled:
        torch.distributed.all_reduce(total)
    model.train()
    if total[1] == 0:
        raise RuntimeError(f"{data_dir}: the validation split is empty; prepare the data with val_fraction > 0")
    return float(total[0] / total[1])


def sample_story(model: GPTNeo, tokenizer: Tokenizer, c: TrainConfig, seed: int) -> str:
    """The story the trainer shows at every evaluation: ``sample_prompt`` continued (temperature 0.8, top-k 50)."""
    return generate_texts(model, tokenizer, [c.sample_prompt], max_new_tokens=c.sample_tokens, temperature=0.8,
                          top_k=50, seed=seed)[0]


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
    barrier(dist)
    say = print if dist.main else (lambda *a, **k: None)

    data_dir = resolve_data(c, run_dir, dist)
    tokenizer = load_dataset_tokenizer(data_dir)
    torch.manual_seed(c.seed)  # the same initial weights on every rank and every run of this config
    random.seed(c.seed)
    if c.init_from_hf:
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
    autocast = autocast_context(device, dtype)
    loader = TokenLoader(data_dir, split="train", batch_size=c.batch_size, seq_len=seq_len, mode=c.data_mode,
                         seed=c.seed, rank=dist.rank, world_size=dist.world_size, threads=c.loader_threads,
                         pin_memory=device.type == "cuda", expected_fingerprint=tokenizer.fingerprint)

    step, counters = 0, {"skipped_steps": 0, "bad_in_a_row": 0, "tokens": 0}
    if c.resume:
        ckpt = read_checkpoint(existing[-1])
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        loader.load_state(loader_state_for_rank(ckpt["loader"], dist, str(existing[-1])))
        set_rng_state(ckpt["rng"])
        step, counters = ckpt["step"], ckpt["counters"]
        say(f"resumed {existing[-1]} at step {step}")

    tokens_per_step = c.batch_size * seq_len * c.grad_accum * dist.world_size
    flops_step = flops_per_token(mc, seq_len) * tokens_per_step
    peak = peak_flops(device, dtype)
    tokenizer_json = tokenizer.to_json()
    if dist.main:
        atomic_write_json(run_dir / "config.json", {"train": dataclasses.asdict(c), "model": mc.to_dict(),
                                                    "data": str(data_dir), "dtype": dtype,
                                                    "world_size": dist.world_size}, indent=2)
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

    metrics = Metrics(run_dir, c.tensorboard) if dist.main else None
    rich_display = dist.main and (c.display == "rich" or (c.display == "auto" and sys.stdout.isatty()))
    progress = Progress("train", c.max_steps, completed=step, enabled=rich_display)

    def message(text: str) -> None:
        if dist.main:
            progress.print(text)

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next(loader)
        return to_device(x, device), to_device(y, device)

    def save(at_step: int) -> None:
        if not dist.main:
            return
        payload = {"step": at_step, "model": model.state_dict(), "model_config": mc.to_dict(),
                   "train_config": dataclasses.asdict(c), "tokenizer_json": tokenizer_json,
                   "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                   "loader": loader.state(), "counters": dict(counters)}
        save_checkpoint(payload, checkpoint_path(run_dir, at_step), keep_last=c.keep_last)

    t_last, steps_since = time.perf_counter(), 0
    with progress:
        try:
            while step < c.max_steps:
                lr = learning_rate(step, c)
                result = train_step(train_model, model, optimizer, scaler, next_batch, c=c, lr=lr, dtype=dtype,
                                    autocast=autocast, dist=dist)
                loss_value = result.loss
                if result.applied:
                    counters["bad_in_a_row"] = 0
                else:
                    counters["skipped_steps"] += 1
                    counters["bad_in_a_row"] += 1
                    message(f"step {step + 1}: non-finite loss ({loss_value}) or gradient norm ({result.grad_norm}); "
                            f"step skipped ({counters['bad_in_a_row']} in a row)")
                    if counters["bad_in_a_row"] >= c.max_bad_steps:
                        raise TrainingAborted(
                            f"aborting: {counters['bad_in_a_row']} consecutive steps with a non-finite loss or "
                            f"gradients (last loss {loss_value}, step {step + 1}). Lower --lr, use --dtype=bf16/fp32, or "
                            f"check the data; the last good checkpoint is in {run_dir / 'checkpoints'}")
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
                    record = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": result.grad_norm,
                              "tokens_per_s": tok_s, "tokens": counters["tokens"], "skipped_steps": counters["skipped_steps"]}
                    if mfu is not None:
                        record["mfu"] = mfu
                    if metrics is not None:
                        metrics.write(record)
                    mfu_text = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
                    stats = f"loss {loss_value:.4f} | lr {lr:.2e} | {tok_s:,.0f} tok/s | MFU {mfu_text}"
                    if progress.live:
                        progress.update(completed=step, status=stats)
                    else:
                        message(f"step {step}/{c.max_steps} | {stats} | ETA {eta:.0f}s")
                    t_last, steps_since = time.perf_counter(), 0

                if step % c.eval_every == 0 or step == c.max_steps:
                    val = evaluate(train_model, data_dir, c, seq_len, dist, device, autocast)
                    record = {"step": step, "val_loss": val, "val_ppl": math.exp(min(val, 50.0))}
                    if metrics is not None:
                        story = sample_story(model, tokenizer, c, seed=c.seed + step)
                        record["sample"] = story
                        one_line = " ".join(story.split())
                        message(f"step {step}: val loss {val:.4f} | ppl {record['val_ppl']:.2f} | sample: {one_line}")
                        metrics.write(record)
                    t_last = time.perf_counter()  # evaluation time is not training throughput

                if step % c.ckpt_every == 0 or step == c.max_steps:
                    save(step)
                    t_last = time.perf_counter()
        finally:
            if metrics is not None:
                metrics.close()
    if dist.main:
        story = sample_story(model, tokenizer, c, seed=c.seed)
        say(f"\nA story by the model ({run_dir}):\n\n{story}\n")
        say(f"checkpoint: {checkpoint_path(run_dir, step)}")
    return run_dir
