"""What the trainer measures at every evaluation: the validation loss (over all ranks) and a sampled story."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch
import torch.nn.functional as F

from tinystories.data import IGNORE_INDEX, ShardError, TokenLoader
from tinystories.model.generate import generate_texts
from tinystories.model.gpt_neo import GPTNeo
from tinystories.runtime.device import Dist, to_device
from tinystories.tokenizer import Tokenizer
from tinystories.train.config import TrainConfig

# Given the number of batches a pass will take, a context whose value advances the display by one batch.
BatchProgress = Callable[[int], AbstractContextManager[Callable[[], None]]]


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module,
    data_dir: Path,
    c: TrainConfig,
    seq_len: int,
    dist: Dist,
    device: torch.device,
    autocast: AbstractContextManager,
    progress: BatchProgress,
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
    with progress(min(c.eval_batches, len(loader))) as advance:
        for i, (x, y) in enumerate(loader):
            if i >= c.eval_batches:
                break
            inputs, targets = to_device(x, device), to_device(y, device)
            with autocast:
                logits = model(inputs).logits
            total[0] += F.cross_entropy(
                logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            ).double()
            total[1] += (targets != IGNORE_INDEX).sum()
            advance()
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
