"""The pytest fixtures shared by ``tests/`` and ``benchmarks/`` (each ``conftest.py`` imports them).

``../shared/data`` beside the checkout (or ``$TINYSTORIES_SHARED_DATA``) holds real, read-only data:
TinyStories text and GPT-2's BPE files. Tests that need it skip cleanly when it is absent. Importing this
module also points Triton at its CPU interpreter when there is no GPU (it reads ``TRITON_INTERPRET`` when
first imported, so this must happen before any test imports it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tinystories.corpus import iter_stories

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def shared_data_dir(repo_root: Path) -> Path:
    """Where the shared data lives for the checkout at ``repo_root``."""
    return Path(os.environ.get("TINYSTORIES_SHARED_DATA", repo_root.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data(request: pytest.FixtureRequest) -> Path:
    """The read-only shared data folder; tests that need it skip cleanly when it is absent."""
    path = shared_data_dir(request.config.rootpath)
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
    from tinystories.tokenizer import Tokenizer

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
