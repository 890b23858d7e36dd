"""The training run: a run directory, resumable bit-exactly from its newest checkpoint.

Each step is :func:`tinystories.train.step.train_step`; every ``log_every`` steps a metrics record (loss,
lr, tokens/s, MFU) goes to ``metrics.jsonl`` (and TensorBoard when installed), every ``eval_every`` steps
the validation loss and a sampled story, every ``ckpt_every`` steps an atomic checkpoint holding everything
needed to continue (model, optimizer, scaler, RNG and loader states). A step whose loss or gradients are
not finite is skipped and counted; ``max_bad_steps`` in a row abort the run.
"""

from __future__ import annotations

import math
import random
import shlex
import signal
import sys
import time
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tinystories.data import IGNORE_INDEX, ShardError, TokenLoader, load_dataset_tokenizer
from tinystories.jsonl import JsonlLog
from tinystories.model.checkpoint import (
    CheckpointWriteError,
    checkpoint_path,
    list_checkpoints,
    read_checkpoint,
    save_checkpoint,
)
from tinystories.model.config import GPTNeoConfig, flops_per_token
from tinystories.model.generate import generate_texts
from tinystories.model.gpt_neo import GPTNeo, model_summary
from tinystories.model.hf import load_hf_model
from tinystories.progress import Progress
from tinystories.runtime.device import (
    Dist,
    autocast_context,
    barrier,
    init_distributed,
    peak_flops,
    resolve_device,
    resolve_execution,
    to_device,
)
from tinystories.runtime.errors import ConfigError
from tinystories.tokenizer import Tokenizer
from tinystories.train.config import TrainConfig, saved_config
from tinystories.train.inputs import DEMO_NOTICE, resolve_data
from tinystories.train.lock import RunLock
from tinystories.train.resume import (
    history_entry,
    loader_state_for_rank,
    newest_intact_checkpoint,
    reconcile,
    remove_stale_temp_files,
    write_run_config,
)
from tinystories.train.signals import Interrupted, StopSignals
from tinystories.train.step import learning_rate, make_optimizer, train_step


class TrainingAborted(RuntimeError):
    """The run cannot usefully continue (e.g. too many non-finite steps in a row)."""


class Metrics:
    """metrics.jsonl (see :mod:`tinystories.jsonl`) and TensorBoard scalars when tensorboard is installed."""

    def __init__(self, run_dir: Path, tensorboard: bool) -> None:
        self._log = JsonlLog(run_dir / "metrics.jsonl")
        self.failed_writes = 0
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                pass  # tensorboard is optional; metrics.jsonl has everything

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record``; a failed write (full disk...) is reported once and training goes on."""
        try:
            self._log.append(record)
            if self._tb is not None:
                for key, value in record.items():
                    if key != "step" and isinstance(value, (int, float)):
                        self._tb.add_scalar(key, value, record["step"])
        except OSError as exc:
            if not self.failed_writes:
                print(
                    f"warning: could not write metrics to {self._log.path} ({exc}); training goes on (further "
                    f"failures are counted, not shown)",
                    file=sys.stderr,
                    flush=True,
                )
            self.failed_writes += 1

    def close(self) -> None:
        self._log.close()
        if self._tb is not None:
            self._tb.close()


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data_dir: Path,
    c: TrainConfig,
    seq_len: int,
    dist: Dist,
    device: torch.device,
    autocast: AbstractContextManager,
) -> float:
    """Mean next-token loss over the first ``eval_batches`` batches of the validation split (all ranks)."""
    model.eval()
    loader = TokenLoader(
        data_dir,
        split="val",
        batch_size=c.batch_size,
        seq_len=seq_len,
        mode=c.data_mode,
        seed=c.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        shuffle=False,
        loop=False,
        threads=c.loader_threads,
    )
    total = torch.zeros(2, dtype=torch.float64, device=device)  # sum of losses, number of targets
    for i, (x, y) in enumerate(loader):
        if i >= c.eval_batches:
            break
        x, y = to_device(x, device), to_device(y, device)
        with autocast:
            logits = model(x).logits
        total[0] += F.cross_entropy(
            logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        ).double()
        total[1] += (y != IGNORE_INDEX).sum()
    if dist.enabled:
        torch.distributed.all_reduce(total)
    model.train()
    if total[1] == 0:
        raise RuntimeError(f"{data_dir}: the validation split is empty; prepare the data with val_fraction > 0")
    return float(total[0] / total[1])


def missing_validation(data_dir: Path, c: TrainConfig, seq_len: int) -> str | None:
    """Why the data have no validation batch to evaluate on (None when they have one), decided at start-up."""
    try:
        loader = TokenLoader(
            data_dir,
            split="val",
            batch_size=c.batch_size,
            seq_len=seq_len,
            mode=c.data_mode,
            shuffle=False,
            loop=False,
            threads=1,
        )
    except ShardError as exc:
        return str(exc)
    if len(loader) == 0:
        return (
            f"{data_dir}: the validation split holds {loader.index['splits']['val']['tokens']} tokens, less than "
            f"one sequence of {seq_len + 1} (prepared with --val-fraction 0?)"
        )
    return None


def sample_story(model: GPTNeo, tokenizer: Tokenizer, c: TrainConfig, seed: int) -> str:
    """The story the trainer shows at every evaluation: ``sample_prompt`` continued (temperature 0.8, top-k 50)."""
    return generate_texts(
        model,
        tokenizer,
        [c.sample_prompt],
        max_new_tokens=c.sample_max_new_tokens,
        temperature=0.8,
        top_k=50,
        seed=seed,
    )[0]


def train(c: TrainConfig) -> Path:
    """Run (or resume) training; returns the run directory. Raises :class:`Interrupted` after a stop signal
    (the checkpoint is written), ConfigError, RunLocked or TrainingAborted."""
    dist = init_distributed(c.device)
    try:
        return _train(c, dist)
    finally:
        if dist.enabled:
            torch.distributed.destroy_process_group()


def _train(c: TrainConfig, dist: Dist) -> Path:
    device = resolve_device(c.device, dist.local_rank)
    resolve_execution(device, dtype=c.dtype, impl=c.impl, compile=c.compile)  # an impossible choice stops here, first
    if c.cpu_threads is not None:
        torch.set_num_threads(c.cpu_threads)
    run_dir = Path(c.out or f"runs/{c.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    with ExitStack() as held:
        if dist.main:  # rank 0 holds the lock for all ranks; it is released however the process ends
            run_dir.mkdir(parents=True, exist_ok=True)
            held.enter_context(RunLock(run_dir))
            removed, size = remove_stale_temp_files(run_dir)
            if removed:
                print(
                    f"removed {removed} temp file(s) ({size / 1e6:,.1f} MB) left by an interrupted write in {run_dir}"
                )
        barrier(dist)
        return _run(c, dist, device, run_dir)


def _start_point(c: TrainConfig, run_dir: Path, dist: Dist) -> tuple[TrainConfig, dict[str, Any] | None, list[str]]:
    """(the config to run, the checkpoint to continue or None, the changes a resume applies)."""
    if not c.resume:
        if list_checkpoints(run_dir):
            raise ConfigError(
                f"{run_dir} already holds checkpoints; pass --resume to continue it or choose a new --out"
            )
        return c, None, []
    warn = (lambda text: print(text, file=sys.stderr)) if dist.main else (lambda text: None)
    ckpt = newest_intact_checkpoint(run_dir, warn) if dist.main else None
    barrier(dist)  # rank 0 has set damaged checkpoints aside
    if not dist.main and list_checkpoints(run_dir):
        ckpt = read_checkpoint(list_checkpoints(run_dir)[-1])
    if ckpt is None:
        if dist.main:
            print(f"--resume: {run_dir} has no checkpoint yet; starting the run from step 0")
        return c, None, []
    c, changes = reconcile(c, saved_config(run_dir) or ckpt["train_config"], ckpt["step"])
    return c, ckpt, changes


def _run(c: TrainConfig, dist: Dist, device: torch.device, run_dir: Path) -> Path:
    c, ckpt, changes = _start_point(c, run_dir, dist)
    execution = resolve_execution(device, dtype=c.dtype, impl=c.impl, compile=c.compile)  # of the restored config
    dtype = execution.dtype
    say = print if dist.main else (lambda *a, **k: None)
    data_dir = resolve_data(c, run_dir, dist)
    tokenizer = load_dataset_tokenizer(data_dir)
    torch.manual_seed(c.seed)  # the same initial weights on every rank and every run of this config
    random.seed(c.seed)
    if ckpt is not None:  # the checkpoint's own shape (resume refuses shape changes; dropout may change)
        dropout = {} if c.dropout is None else {"dropout": c.dropout}
        model = GPTNeo(GPTNeoConfig.from_dict({**ckpt["model_config"], **dropout}))
    elif c.init_from_hf:
        model = load_hf_model(c.init_from_hf)
        if model.config.vocab_size != tokenizer.n_vocab:
            raise ConfigError(
                f"init_from_hf={c.init_from_hf}: the model's vocab_size {model.config.vocab_size} "
                f"differs from the data's tokenizer ({tokenizer.n_vocab} tokens)"
            )
    else:
        model = GPTNeo(c.gpt_neo_config(tokenizer.n_vocab))
    mc = model.config
    seq_len = c.seq_len or mc.max_position_embeddings
    if seq_len > mc.max_position_embeddings:
        raise ConfigError(f"seq_len={seq_len} exceeds the model's context of {mc.max_position_embeddings}")
    model.impl = execution.impl
    model.to(device).train()
    optimizer = make_optimizer(model, c, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "fp16")
    autocast = autocast_context(device, dtype)
    loader = TokenLoader(
        data_dir,
        split="train",
        batch_size=c.batch_size,
        seq_len=seq_len,
        mode=c.data_mode,
        seed=c.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        threads=c.loader_threads,
        pin_memory=device.type == "cuda",
        expected_fingerprint=tokenizer.fingerprint,
    )
    no_eval = missing_validation(data_dir, c, seq_len)

    step, counters = 0, {"skipped_steps": 0, "bad_in_a_row": 0, "tokens": 0}
    if ckpt is not None:
        loader_state = loader_state_for_rank(ckpt["loader"], dist, str(ckpt["path"]))  # refuses another world size
        try:
            loader.load_state(loader_state)
        except ValueError as exc:
            raise ConfigError(f"--resume: {data_dir} is not the data {ckpt['path']} was trained on ({exc})") from None
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        for group, fresh in zip(optimizer.param_groups, make_optimizer(model, c, device).param_groups):
            group.update(weight_decay=fresh["weight_decay"], betas=fresh["betas"])  # the config's, not the saved
        if ckpt["scaler"]:  # empty when saved without fp16: a run switched to fp16 starts a fresh scale
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        step, counters = ckpt["step"], ckpt["counters"]
        say(f"resumed {ckpt['path']} at step {step}" + "".join(f"\n  changed: {line}" for line in changes))

    tokens_per_step = c.batch_size * seq_len * c.grad_accum * dist.world_size
    flops_step = flops_per_token(mc, seq_len) * tokens_per_step
    peak = peak_flops(device, dtype)
    tokenizer_json = tokenizer.to_json()
    if dist.main:
        write_run_config(
            run_dir,
            {
                "train": c.model_dump(),
                "model": mc.to_dict(),
                "data": str(data_dir),
                "dtype": dtype,
                "execution": execution.as_dict(),
                "world_size": dist.world_size,
            },
            history_entry("resume" if ckpt else "start", step, changes),
        )
        say(execution.describe())
        say(
            f"{model_summary(model)}\ndata {data_dir} | {tokens_per_step:,} tokens/step | device {device} "
            f"{dtype} x{dist.world_size} | run dir {run_dir}"
        )
        if c.data is None:
            say(f"[demo] {DEMO_NOTICE}")
        if no_eval:
            say(f"{no_eval}: training without validation loss (stories are still sampled every eval_every steps)")

    train_model: torch.nn.Module = model
    if execution.compile:
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
        payload = {
            "step": at_step,
            "model": model.state_dict(),
            "model_config": mc.to_dict(),
            "train_config": c.model_dump(),
            "tokenizer_json": tokenizer_json,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
            "loader": loader.state(),
            "counters": dict(counters),
        }
        try:
            save_checkpoint(payload, checkpoint_path(run_dir, at_step), keep_last=c.keep_last)
        except CheckpointWriteError as exc:
            raise TrainingAborted(
                f"{exc}. Free space (or fix the folder's permissions), then resume with: {resume_command(run_dir)}"
            ) from None

    def evaluate_and_sample(at_step: int) -> None:
        record: dict[str, Any] = {"step": at_step}
        if not no_eval:
            val = evaluate(train_model, data_dir, c, seq_len, dist, device, autocast)
            record.update(val_loss=val, val_ppl=math.exp(min(val, 50.0)))
        if metrics is not None:
            record["sample"] = sample_story(model, tokenizer, c, seed=c.seed + at_step)
            val_text = f"val loss {record['val_loss']:.4f} | ppl {record['val_ppl']:.2f} | " if not no_eval else ""
            message(f"step {at_step}: {val_text}sample: {' '.join(record['sample'].split())}")
            metrics.write(record)

    t_last, steps_since = time.perf_counter(), 0
    if step >= c.max_steps:
        message(f"{run_dir} is already at step {step} of max_steps={c.max_steps}; raise --max_steps to train further")
    with progress, StopSignals() as stop:
        try:
            while step < c.max_steps:
                lr = learning_rate(step, c)
                result = train_step(
                    train_model, model, optimizer, scaler, next_batch, c=c, lr=lr, autocast=autocast, dist=dist
                )
                loss_value = result.loss
                if result.applied:
                    counters["bad_in_a_row"] = 0
                elif result.overflow:  # fp16: the GradScaler lowered its scale; not a sign of a broken run
                    counters["overflow_steps"] = counters.get("overflow_steps", 0) + 1
                else:
                    counters["skipped_steps"] += 1
                    counters["bad_in_a_row"] += 1
                    message(
                        f"step {step + 1}: non-finite loss ({loss_value}) or gradient norm ({result.grad_norm}); "
                        f"step skipped ({counters['bad_in_a_row']} in a row)"
                    )
                    if counters["bad_in_a_row"] >= c.max_bad_steps:
                        raise TrainingAborted(
                            f"aborting: {counters['bad_in_a_row']} consecutive steps with a non-finite loss or "
                            f"gradients (last loss {loss_value}, step {step + 1}). Lower --lr, use --dtype=bf16/fp32, "
                            f"or "
                            f"check the data; the last good checkpoint is in {run_dir / 'checkpoints'}"
                        )
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
                    record = {
                        "step": step,
                        "loss": loss_value,
                        "lr": lr,
                        "grad_norm": result.grad_norm,
                        "tokens_per_s": tok_s,
                        "tokens": counters["tokens"],
                        "skipped_steps": counters["skipped_steps"],
                        "overflow_steps": counters.get("overflow_steps", 0),
                    }
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

                saved = step % c.ckpt_every == 0 or step == c.max_steps
                if saved:  # before evaluation: a failing or interrupted evaluation costs no training
                    save(step)
                    t_last, steps_since = time.perf_counter(), 0  # checkpoints are not training throughput
                signum = agreed_signal(stop.signum, dist, device)
                if signum:
                    if not saved:
                        save(step)
                    raise Interrupted(
                        signum,
                        f"stopped by {signal.Signals(signum).name} at step {step} of "
                        f"{c.max_steps}; checkpoint {checkpoint_path(run_dir, step)} written. "
                        f"Resume with: {resume_command(run_dir)}",
                    )
                if step % c.eval_every == 0 or step == c.max_steps:
                    try:
                        evaluate_and_sample(step)
                    except Exception as exc:  # noqa: BLE001 (a failed evaluation must not end the run)
                        message(f"step {step}: evaluation failed ({type(exc).__name__}: {exc}); training goes on")
                    t_last, steps_since = time.perf_counter(), 0  # evaluation time is not training throughput
        finally:
            if metrics is not None:
                metrics.close()
    if dist.main:
        story = sample_story(model, tokenizer, c, seed=c.seed)
        say(f"\nA story by the model ({run_dir}):\n\n{story}\n")
        say(f"checkpoint: {checkpoint_path(run_dir, step)}")
    return run_dir


def agreed_signal(signum: int | None, dist: Dist, device: torch.device) -> int:
    """The stop signal any rank received (0: none); under DDP all ranks stop at the same step."""
    if not dist.enabled:
        return signum or 0
    flag = torch.tensor([signum or 0], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag.item())


def resume_command(run_dir: Path) -> str:
    return f"tinystories-train --out={shlex.quote(str(run_dir))} --resume"
