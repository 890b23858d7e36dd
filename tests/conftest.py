"""Shared test fixtures: where ../shared/data lives, and Triton's CPU interpreter when there is no GPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Triton reads TRITON_INTERPRET at import time, so it must be set before any test imports it.
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # torch is a hard dependency, but keep collection errors readable
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("TINYSTORIES_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only ../shared/data folder; tests that need it skip cleanly when it is absent."""
    if not (SHARED_DATA / "SOURCES.md").is_file():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def gpt2_files(shared_data: Path) -> tuple[Path, Path]:
    vocab, merges = shared_data / "gpt2" / "vocab.json", shared_data / "gpt2" / "merges.txt"
    if not (vocab.is_file() and merges.is_file()):
        pytest.skip("GPT-2 BPE files not found in shared data")
    return vocab, merges


def read_stories(path: Path, limit: int | None = None) -> list[str]:
    """Stories of a TinyStories .txt or .txt.zst file (separated by <|endoftext|> lines)."""
    raw = path.read_bytes()
    if path.suffix == ".zst":
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(raw).read()
    stories = [s.strip() for s in raw.decode("utf-8").split("<|endoftext|>")]
    stories = [s for s in stories if s]
    return stories[:limit] if limit else stories


@pytest.fixture(scope="session")
def real_stories(shared_data: Path) -> list[str]:
    """The properly cased, properly segmented V1 train head (2,316 stories)."""
    return read_stories(shared_data / "tinystories" / "tinystories_v1_train_head.txt.zst")
