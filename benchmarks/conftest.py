"""Benchmarks share the tests' data locations; each benchmark prints ours vs the peer as a ratio."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# Load tests/conftest.py under its own name: `from conftest import ...` would find this very module
# (pytest imports both as "conftest" in its default import mode) and fail as a circular import.
_spec = importlib.util.spec_from_file_location("tests_conftest", Path(__file__).resolve().parent.parent / "tests" / "conftest.py")
_tests_conftest = importlib.util.module_from_spec(_spec)
sys.modules["tests_conftest"] = _tests_conftest
_spec.loader.exec_module(_tests_conftest)
from tests_conftest import SHARED_DATA, gpt2_files, read_stories, real_stories, shared_data  # noqa: E402,F401

try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass
