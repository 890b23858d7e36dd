"""Benchmarks share the tests' data locations; each benchmark prints ours vs the peer as a ratio."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# tests/conftest.py is loaded under its own name: a plain `from conftest import ...` would find this very file
# (pytest registers both as "conftest") and fail on the circular import.
_spec = importlib.util.spec_from_file_location("_tests_conftest", Path(__file__).resolve().parent.parent / "tests" / "conftest.py")
_tests_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tests_conftest)
SHARED_DATA = _tests_conftest.SHARED_DATA
gpt2_files, read_stories, real_stories, shared_data = (
    _tests_conftest.gpt2_files,
    _tests_conftest.read_stories,
    _tests_conftest.real_stories,
    _tests_conftest.shared_data,
)

try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass
