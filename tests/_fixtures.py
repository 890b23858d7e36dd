"""What ``tests/`` and ``benchmarks/`` share: a pytest plugin that both conftests load (``pytest_plugins``; pyproject's
pytest ``pythonpath`` puts ``tests/`` on the path for ``benchmarks/``), and :func:`save_random_checkpoint`, the one
way they make a checkpoint.

``../shared/data`` beside the checkout (or ``$TINYSTORIES_SHARED_DATA``) holds real, read-only data: TinyStories
text and GPT-2's BPE files. Tests that need it skip cleanly when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from tinystories.corpus import iter_stories
from tinystories.model import GPTNeo, config_from_preset
from tinystories.model.checkpoint import checkpoint_path, save_checkpoint
from tinystories.tokenizer import Tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
# A GPT-Neo that runs in milliseconds on CPU: the demo preset's layout, narrower, shallower, a shorter context.
TINY = {"hidden_size": 32, "num_layers": 2, "max_position_embeddings": 128}


def shared_data_dir() -> Path:
    """Where the shared data lives for this checkout."""
    return Path(os.environ.get("TINYSTORIES_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def save_random_checkpoint(
    run_dir: Path,
    step: int,
    tokenizer: Tokenizer,
    *,
    preset: str | None = None,
    seed: int = 0,
    train_config: dict[str, Any] | None = None,
    **config: Any,
) -> Path:
    """A randomly initialised GPT-Neo (weights from ``torch.manual_seed(seed)``) saved with ``tokenizer`` as step
    ``step`` of the run at ``run_dir``, as the trainer saves one; returns the file. The model is :data:`TINY` unless
    a ``preset`` is named; ``config`` overrides either (the vocabulary is the tokenizer's). ``train_config`` is what
    readers of the checkpoint look up (``preset``: an ``-instruct`` one makes an Instruct model; ``seq_len``)."""
    shape = {**TINY, **config} if preset is None else config
    model_config = config_from_preset(preset or "demo", vocab_size=tokenizer.n_vocab, **shape)
    torch.manual_seed(seed)
    payload = {
        "model_config": model_config.to_dict(),
        "model": GPTNeo(model_config).state_dict(),
        "tokenizer_json": tokenizer.to_json(),
        "train_config": train_config or {},
    }
    return save_checkpoint(payload, checkpoint_path(run_dir, step))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only shared data folder; tests that need it skip cleanly when it is absent."""
    path = shared_data_dir()
    if not (path / "SOURCES.md").is_file():
        pytest.skip(f"shared test data not found at {path}")
    return path


@pytest.fixture(scope="session")
def gpt2_files(shared_data: Path) -> tuple[Path, Path]:
    vocab, merges = shared_data / "gpt2" / "vocab.json", shared_data / "gpt2" / "merges.txt"
    if not (vocab.is_file() and merges.is_file()):
        pytest.skip("GPT-2 BPE files not found in shared data")
    return vocab, merges


@pytest.fixture(scope="session")
def real_stories(shared_data: Path) -> list[str]:
    """The properly cased, properly segmented V1 train head (2,316 stories)."""
    return list(iter_stories(shared_data / "tinystories" / "tinystories_v1_train_head.txt.zst"))


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Token shards of 300 template stories with a 300-token BPE (10% validation): data for a tiny trainer run."""
    from tinystories.data import prepare
    from tinystories.story_templates import generate_stories

    root = tmp_path_factory.mktemp("tiny-shards")
    stories = generate_stories(300, seed=2)
    (root / "stories.txt").write_text("\n<|endoftext|>\n".join(stories) + "\n", encoding="utf-8")
    prepare(
        [root / "stories.txt"],
        root / "shards",
        Tokenizer.train(stories, vocab_size=300),
        val_fraction=0.1,
        progress=False,
    )
    return root / "shards"
