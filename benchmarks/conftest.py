"""Benchmarks share the tests' data locations; each benchmark prints ours vs the peer as a ratio."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import SHARED_DATA, gpt2_files, read_stories, real_stories, shared_data  # noqa: E402,F401

try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass
