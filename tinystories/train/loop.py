"""The training run: a run directory, resumable bit-exactly from its newest checkpoint.

:func:`train` takes the run directory's lock and hands the run to a :class:`Trainer`, whose methods read one at a
time: ``__init__`` builds the model, optimizer and data, fresh or from the newest checkpoint; :meth:`~Trainer.fit`
is the loop; :meth:`~Trainer.train_one_step` runs :func:`tinystories.train.step.train_step` and skips and counts
a step whose loss or gradients are not finite (``max_bad_steps`` in a row abort the run); :meth:`~Trainer.log`
shows every step (:mod:`tinystories.train.metrics`) and every ``log_every`` steps writes a metrics record (loss,
lr, tokens/s, MFU) to ``metrics.jsonl`` and TensorBoard; :meth:`~Trainer.save` writes every ``ckpt_every`` steps
an atomic checkpoint of everything needed to continue (model, optimizer, scaler, RNG and loader states);
:meth:`~Trainer.evaluate` measures every ``eval_every`` steps the validation loss and samples a story. A stop
signal finishes the step, writes a checkpoint and raises :class:`Interrupted`.
"""

from __future__ import annotations

import math
import random
import shlex
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, cast

import torch

from tinystories.data import TokenLoader, load_dataset_tokenizer
from tinystories.model.checkpoint import (
    CheckpointWriteError,
    checkpoint_path,
    list_checkpoints,
    read_checkpoint,
    save_checkpoint,
)
from tinystories.model.config import GPTNeoConfig, flops_per_token
from tinystories.model.gpt_neo import GPTNeo, model_summary
from tinystories.model.hf import load_hf_model
from tinystories.progress import format_duration
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
from tinystories.train.config import TrainConfig, saved_config
from tinystories.train.inputs import DEMO_NOTICE, resolve_data
from tinystories.train.lock import RunLock
from tinystories.train.memory import check_memory
from tinystories.train.metrics import Metrics, StepClock, TrainDisplay
from tinystories.train.resume import (
    history_entry,
    loader_state_for_rank,
    newest_intact_checkpoint,
    reconcile,
    remove_stale_temp_files,
    write_run_config,
)
from tinystories.train.rng import rng_state, set_rng_state
from tinystories.train.signals import Interrupted, StopSignals, agreed_signal
from tinystories.train.step import StepResult, learning_rate, make_optimizer, train_step
from tinystories.train.validation import missing_validation, sample_story, validation_loss


class TrainingAborted(RuntimeError):
    """The run cannot usefully continue (e.g. too many non-finite steps in a row)."""


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
    execution = resolve_execution(device, dtype=c.dtype, impl=c.impl, compile=c.compile)  # an impossible choice: here
    check_memory(c, device, execution.dtype)  # a configuration the device cannot hold: before the run folder exists
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
        return Trainer(c, dist, device, run_dir).fit()


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


class Trainer:
    """One training run in ``run_dir``, on this process's ``device`` (one rank of ``dist``)."""

    def __init__(self, c: TrainConfig, dist: Dist, device: torch.device, run_dir: Path) -> None:
        """The model, optimizer and data of a fresh run, or restored from the newest checkpoint (``resume``)."""
        c, ckpt, changes = _start_point(c, run_dir, dist)
        self.c, self.dist, self.device, self.run_dir = c, dist, device, run_dir
        self.execution = resolve_execution(device, dtype=c.dtype, impl=c.impl, compile=c.compile)  # restored config's
        self.data_dir = resolve_data(c, run_dir, dist)
        self.tokenizer = load_dataset_tokenizer(self.data_dir)
        torch.manual_seed(c.seed)  # the same initial weights on every rank and every run of this config
        random.seed(c.seed)
        self.model = self._build_model(ckpt)
        self.seq_len = c.seq_len or self.model.config.max_position_embeddings
        if self.seq_len > self.model.config.max_position_embeddings:
            raise ConfigError(
                f"seq_len={self.seq_len} exceeds the model's context of {self.model.config.max_position_embeddings}"
            )
        self.model.impl = self.execution.impl
        self.model.to(device).train()
        self.optimizer = make_optimizer(self.model, c, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.execution.dtype == "fp16")
        self.autocast = autocast_context(device, self.execution.dtype)
        self.loader = TokenLoader(
            self.data_dir,
            split="train",
            batch_size=c.batch_size,
            seq_len=self.seq_len,
            mode=c.data_mode,
            seed=c.seed,
            rank=dist.rank,
            world_size=dist.world_size,
            threads=c.loader_threads,
            pin_memory=device.type == "cuda",
            expected_fingerprint=self.tokenizer.fingerprint,
        )
        self.no_eval = missing_validation(self.data_dir, c, self.seq_len)
        self.step, self.counters = 0, {"skipped_steps": 0, "bad_in_a_row": 0, "tokens": 0}
        if ckpt is not None:
            self._restore(ckpt, changes)
        self.tokens_per_step = c.batch_size * self.seq_len * c.grad_accum * dist.world_size
        self.flops_per_step = flops_per_token(self.model.config, self.seq_len) * self.tokens_per_step
        self.peak_flops = peak_flops(device, self.execution.dtype)
        self.tokenizer_json = self.tokenizer.to_json()
        if dist.main:
            self._describe("resume" if ckpt else "start", changes)
        self.train_model = self._wrap(self.model)
        self.metrics = Metrics(run_dir, c.tensorboard) if dist.main else None
        self.display = TrainDisplay(c.max_steps, self.step, mode=c.display, enabled=dist.main)
        self.clock = StepClock()

    # -- setup -------------------------------------------------------------------------------------------------
    def _build_model(self, ckpt: dict[str, Any] | None) -> GPTNeo:
        """The checkpoint's own shape (resume refuses shape changes; dropout may change), a Hugging Face model
        (``init_from_hf``) or the configured preset."""
        c = self.c
        if ckpt is not None:
            dropout = {} if c.dropout is None else {"dropout": c.dropout}
            return GPTNeo(GPTNeoConfig.from_dict({**ckpt["model_config"], **dropout}))
        if c.init_from_hf:
            model = load_hf_model(c.init_from_hf)
            if model.config.vocab_size != self.tokenizer.n_vocab:
                raise ConfigError(
                    f"init_from_hf={c.init_from_hf}: the model's vocab_size {model.config.vocab_size} "
                    f"differs from the data's tokenizer ({self.tokenizer.n_vocab} tokens)"
                )
            return model
        return GPTNeo(c.gpt_neo_config(self.tokenizer.n_vocab))

    def _restore(self, ckpt: dict[str, Any], changes: list[str]) -> None:
        """Continue exactly where ``ckpt`` stopped: loader position, weights, optimizer, scaler, RNG, counters."""
        state = loader_state_for_rank(ckpt["loader"], self.dist, str(ckpt["path"]))  # refuses another world size
        try:
            self.loader.load_state(state)
        except ValueError as exc:
            raise ConfigError(
                f"--resume: {self.data_dir} is not the data {ckpt['path']} was trained on ({exc})"
            ) from None
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        fresh_groups = make_optimizer(self.model, self.c, self.device).param_groups
        for group, fresh in zip(self.optimizer.param_groups, fresh_groups):
            group.update(weight_decay=fresh["weight_decay"], betas=fresh["betas"])  # the config's, not the saved
        if ckpt["scaler"]:  # empty when saved without fp16: a run switched to fp16 starts a fresh scale
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.step, self.counters = ckpt["step"], ckpt["counters"]
        if self.dist.main:
            print(f"resumed {ckpt['path']} at step {self.step}" + "".join(f"\n  changed: {line}" for line in changes))

    def _describe(self, event: str, changes: list[str]) -> None:
        """config.json (the config in force and its history), then what is trained, on what, where."""
        c, dist = self.c, self.dist
        record = {
            "train": c.model_dump(),
            "model": self.model.config.to_dict(),
            "data": str(self.data_dir),
            "dtype": self.execution.dtype,
            "execution": self.execution.as_dict(),
            "world_size": dist.world_size,
        }
        write_run_config(self.run_dir, record, history_entry(event, self.step, changes))
        print(self.execution.describe())
        print(
            f"{model_summary(self.model)}\ndata {self.data_dir} | {self.tokens_per_step:,} tokens/step | device "
            f"{self.device} {self.execution.dtype} x{dist.world_size} | run dir {self.run_dir}"
        )
        if c.data is None:
            print(f"[demo] {DEMO_NOTICE}")
        if self.no_eval:
            print(
                f"{self.no_eval}: training without validation loss (stories are still sampled every eval_every steps)"
            )

    def _wrap(self, model: GPTNeo) -> torch.nn.Module:
        """The model as trained: compiled and/or DDP-wrapped (``self.model`` stays the plain one for saving)."""
        # torch.compile of a module returns a module; its annotation only says Callable.
        train_model = cast(torch.nn.Module, torch.compile(model)) if self.execution.compile else model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            train_model = DistributedDataParallel(train_model, device_ids=device_ids)
        return train_model

    # -- the loop ----------------------------------------------------------------------------------------------
    def fit(self) -> Path:
        """Train to ``max_steps`` (checkpoint, then evaluate, where due), then tell a story; returns the run dir."""
        c = self.c
        if self.step >= c.max_steps:
            self.display.print(
                f"{self.run_dir} is already at step {self.step} of max_steps={c.max_steps}; raise --max-steps to "
                f"train further"
            )
        with self.display, StopSignals() as stop:
            try:
                self.clock.restart()
                while self.step < c.max_steps:
                    result, lr = self.train_one_step()
                    self.log(result, lr)
                    saved = self.step % c.ckpt_every == 0 or self.step == c.max_steps
                    if saved:  # before evaluation: a failing or interrupted evaluation costs no training
                        self.save()
                        self.clock.restart()  # checkpoints are not training throughput
                    self.stop_if_signalled(stop.signum, saved)
                    if self.step % c.eval_every == 0 or self.step == c.max_steps:
                        self.evaluate()
                        self.clock.restart()  # evaluation time is not training throughput
            finally:
                if self.metrics is not None:
                    self.metrics.close()
        if self.dist.main:
            story = sample_story(self.model, self.tokenizer, c, seed=c.seed)
            print(f"\nA story by the model ({self.run_dir}):\n\n{story}\n")
            print(f"checkpoint: {checkpoint_path(self.run_dir, self.step)}")
        return self.run_dir

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next(self.loader)
        return to_device(x, self.device), to_device(y, self.device)

    def train_one_step(self) -> tuple[StepResult, float]:
        """One optimizer step at the schedule's learning rate; returns its result and the learning rate. A step
        whose loss or gradients are not finite is skipped and counted; ``max_bad_steps`` in a row abort the run."""
        c, counters = self.c, self.counters
        lr = learning_rate(self.step, c)
        result = train_step(
            self.train_model,
            self.model,
            self.optimizer,
            self.scaler,
            self._next_batch,
            c=c,
            lr=lr,
            autocast=self.autocast,
            dist=self.dist,
        )
        if result.applied:
            counters["bad_in_a_row"] = 0
        elif result.overflow:  # fp16: the GradScaler lowered its scale; not a sign of a broken run
            counters["overflow_steps"] = counters.get("overflow_steps", 0) + 1
        else:
            counters["skipped_steps"] += 1
            counters["bad_in_a_row"] += 1
            self.display.print(
                f"step {self.step + 1}: non-finite loss ({result.loss}) or gradient norm ({result.grad_norm}); "
                f"step skipped ({counters['bad_in_a_row']} in a row)"
            )
            if counters["bad_in_a_row"] >= c.max_bad_steps:
                raise TrainingAborted(
                    f"aborting: {counters['bad_in_a_row']} consecutive steps with a non-finite loss or gradients "
                    f"(last loss {result.loss}, step {self.step + 1}). Lower --lr, use --dtype=bf16/fp32, or check "
                    f"the data; the last good checkpoint is in {self.run_dir / 'checkpoints'}"
                )
        self.step += 1
        counters["tokens"] += self.tokens_per_step
        return result, lr

    # -- logging -----------------------------------------------------------------------------------------------
    def log(self, result: StepResult, lr: float) -> None:
        """Time the step and show it; every ``log_every`` steps (and at the last) write a metrics record too.

        The display shows the pace of the recent steps, the record that of the steps since the previous record.
        The process's first step is shown at once (a plain line too), its ETA marked "(warm-up)" until the step
        times settle; then one line projects the run's wall time."""
        c, step = self.c, self.step
        record_due = step % c.log_every == 0 or step == c.max_steps
        if record_due and self.device.type == "cuda":
            torch.cuda.synchronize()  # the record's tokens/s includes the work still queued on the GPU
        self.clock.tick()
        window_seconds = self.clock.take_window() if record_due else None
        if window_seconds is not None and self.metrics is not None:
            tok_s, mfu = self._rates(window_seconds)
            record = {
                "step": step,
                "loss": result.loss,
                "lr": lr,
                "grad_norm": result.grad_norm,
                "tokens_per_s": tok_s,
                "tokens": self.counters["tokens"],
                "skipped_steps": self.counters["skipped_steps"],
                "overflow_steps": self.counters.get("overflow_steps", 0),
            }
            self.metrics.write(record if mfu is None else {**record, "mfu": mfu})
        tok_s, mfu = self._rates(self.clock.seconds_per_step())
        mfu_text = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
        stats = f"loss {result.loss:.4f} | lr {lr:.2e} | {tok_s:,.0f} tok/s | MFU {mfu_text}"
        self.display.step(step, stats, self.clock.eta(c.max_steps - step), line=record_due or self.clock.steps == 1)
        if self.clock.just_settled:
            where = f"{self.device}" + (f" x{self.dist.world_size}" if self.dist.world_size > 1 else "")
            self.display.print(self.clock.projection(step, c.max_steps, self.tokens_per_step, where))
        if record_due:
            self.clock.restart()  # logging is not training throughput

    def _rates(self, seconds_per_step: float) -> tuple[float, float | None]:
        """(tokens/s, model FLOPs utilisation or None where the device's peak is unknown) at this pace."""
        peak = self.peak_flops * self.dist.world_size if self.peak_flops else None
        return self.tokens_per_step / seconds_per_step, self.flops_per_step / seconds_per_step / peak if peak else None

    # -- checkpoints and signals -------------------------------------------------------------------------------
    def save(self) -> None:
        """An atomic checkpoint of everything needed to continue bit-exactly (rank 0 writes it)."""
        if not self.dist.main:
            return
        payload = {
            "step": self.step,
            "model": self.model.state_dict(),
            "model_config": self.model.config.to_dict(),
            "train_config": self.c.model_dump(),
            "tokenizer_json": self.tokenizer_json,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "loader": self.loader.state(),
            "counters": dict(self.counters),
        }
        try:
            save_checkpoint(payload, checkpoint_path(self.run_dir, self.step), keep_last=self.c.keep_last)
        except CheckpointWriteError as exc:
            raise TrainingAborted(
                f"{exc}. Free space (or fix the folder's permissions), then resume with: {resume_command(self.run_dir)}"
            ) from None

    def stop_if_signalled(self, signum: int | None, saved: bool) -> None:
        """After a stop signal on any rank: checkpoint this step (unless just done) and raise :class:`Interrupted`."""
        agreed = agreed_signal(signum, self.dist, self.device)
        if not agreed:
            return
        if not saved:
            self.save()
        raise Interrupted(
            agreed,
            f"stopped by {signal.Signals(agreed).name} at step {self.step} of {self.c.max_steps}; checkpoint "
            f"{checkpoint_path(self.run_dir, self.step)} written. Resume with: {resume_command(self.run_dir)}",
        )

    # -- evaluation --------------------------------------------------------------------------------------------
    def evaluate(self) -> None:
        """The validation loss (every rank takes part) and a sampled story (rank 0), shown and recorded. A failed
        evaluation is reported and training goes on."""
        step = self.step
        record: dict[str, Any] = {"step": step}
        try:
            if not self.no_eval:
                started = time.perf_counter()
                val = validation_loss(
                    self.train_model,
                    self.data_dir,
                    self.c,
                    self.seq_len,
                    self.dist,
                    self.device,
                    self.autocast,
                    progress=lambda batches: self.display.validation(step, batches),
                )
                record.update(val_loss=val, val_ppl=math.exp(min(val, 50.0)))
                took = format_duration(time.perf_counter() - started)
                self.display.print(f"step {step}: val loss {val:.4f} | ppl {record['val_ppl']:.2f} ({took})")
            if self.metrics is not None:
                record["sample"] = sample_story(self.model, self.tokenizer, self.c, seed=self.c.seed + step)
                self.display.print(f"step {step}: sample: {' '.join(record['sample'].split())}")
                self.metrics.write(record)
        except Exception as exc:  # noqa: BLE001 (a failed evaluation must not end the run)
            self.display.print(f"step {step}: evaluation failed ({type(exc).__name__}: {exc}); training goes on")


def resume_command(run_dir: Path) -> str:
    return f"tinystories-train --out={shlex.quote(str(run_dir))} --resume"
