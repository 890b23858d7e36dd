"""Fixtures shared by the trainer tests (imported by name into the test modules that use them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tinystories.model.checkpoint import list_checkpoints, read_checkpoint

# A model small enough that a step takes milliseconds, with both attention types and a window < seq_len.
TINY = [
    "--hidden-size=32",
    "--num-layers=2",
    "--num-heads=2",
    "--context=64",
    "--window-size=16",
    "--seq-len=32",
    "--batch-size=4",
    "--display=plain",
    "--tensorboard=false",
    "--eval-batches=2",
    "--warmup-steps=3",
    "--lr=3e-3",
    "--min-lr=3e-4",
    "--sample-max-new-tokens=20",
]


def make_dataset(root: Path, val_fraction: float) -> Path:
    """Shards of 600 template stories with a 400-token BPE trained on them."""
    from tinystories.data import prepare
    from tinystories.story_templates import generate_stories
    from tinystories.tokenizer import Tokenizer

    stories = generate_stories(600, seed=1)
    (root / "stories.txt").write_text("\n<|endoftext|>\n".join(stories) + "\n", encoding="utf-8")
    tokenizer = Tokenizer.train(stories, vocab_size=400)
    prepare([root / "stories.txt"], root / "shards", tokenizer, val_fraction=val_fraction, progress=False)
    return root / "shards"


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), val_fraction=0.1)


def train_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_train(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tinystories.train", *args],
        capture_output=True,
        text=True,
        env=train_env(),
        timeout=600,
        **kwargs,
    )


def start_train(args: list[str]) -> subprocess.Popen:
    """A trainer in the background, stdout and stderr merged into one line-buffered text pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "tinystories.train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=train_env(),
    )


def sigkill_when(proc: subprocess.Popen, line_prefix: str) -> None:
    """SIGKILL a trainer started with merged text output once it prints a line starting with ``line_prefix``."""
    for line in proc.stdout:
        if line.startswith(line_prefix):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(list_checkpoints(run_dir)[-1])["model"]
