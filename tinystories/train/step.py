"""The one training step, shared by the trainer and ``tinystories sweep estimate`` (which times it).

``grad_accum`` micro-batches forward/backward under autocast (the loss without materialised logits on the
fused path), the gradients unscaled and clipped, then an AdamW step at the learning rate of a linear
warmup + cosine schedule. A step whose loss or gradients are not finite is not applied; the caller counts
it. With fp16 a finite loss whose scaled gradients overflow is an ``overflow`` step: expected while the
GradScaler finds its scale (it lowers it), skipped and counted apart from the non-finite ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import cast

import torch
from torch.nn.parallel import DistributedDataParallel

from tinystories.model.gpt_neo import GPTNeo
from tinystories.runtime.device import Dist
from tinystories.train.config import TrainConfig


def learning_rate(step: int, c: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr`` at ``lr_decay_steps`` (default ``max_steps``),
    then ``min_lr`` (a run extended past its schedule continues at ``min_lr``)."""
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    decay_steps = c.lr_decay_steps or c.max_steps
    progress = min(1.0, (step - c.warmup_steps) / max(1, decay_steps - c.warmup_steps))
    return c.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (c.lr - c.min_lr)


def make_optimizer(model: GPTNeo, c: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # Weight decay on matmul weights and embeddings only, never on biases or LayerNorms.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": c.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"  # one kernel for the whole update
    return torch.optim.AdamW(groups, lr=c.lr, betas=(c.beta1, c.beta2), fused=fused)


@dataclass(frozen=True)
class StepResult:
    loss: float  # mean over the micro-batches (and over the ranks under DDP)
    grad_norm: float  # before clipping
    applied: bool  # False: the loss or the gradients were not finite, the weights did not change
    overflow: bool = False  # fp16: not applied because the scaled gradients overflowed (the scale was lowered)


def train_step(
    train_model: torch.nn.Module,
    model: GPTNeo,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    *,
    c: TrainConfig,
    lr: float,
    autocast: AbstractContextManager,
    dist: Dist,
) -> StepResult:
    """One optimiser step of ``model`` (``train_model`` is the model as trained: compiled, DDP-wrapped...)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=next(model.parameters()).device)
    for micro in range(c.grad_accum):
        x, y = next_batch()
        last = micro == c.grad_accum - 1
        # Under DDP (dist.enabled), train_model is the DistributedDataParallel wrapper: one all-reduce per step.
        sync = cast(DistributedDataParallel, train_model).no_sync() if dist.enabled and not last else nullcontext()
        with sync, autocast:
            loss = train_model(x, y, return_logits=False).loss / c.grad_accum
        scaler.scale(loss).backward()
        loss_sum += loss.detach()
    if dist.enabled:
        torch.distributed.all_reduce(loss_sum, op=torch.distributed.ReduceOp.AVG)
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip if c.grad_clip > 0 else float("inf"))
    loss_value = float(loss_sum)
    applied = math.isfinite(loss_value) and bool(torch.isfinite(grad_norm))
    if applied:
        scaler.step(optimizer)
    scaler.update()  # after an overflow (inf found by unscale_) this lowers the scale
    optimizer.zero_grad(set_to_none=True)
    overflow = scaler.is_enabled() and math.isfinite(loss_value) and not applied
    return StepResult(loss_value, float(grad_norm), applied, overflow)
