"""Benchmarks share the tests' data locations; each benchmark prints ours vs the peer as a ratio."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# tests/conftest.py is loaded under its own name: a plain `import conftest` here would import this file.
_spec = importlib.util.spec_from_file_location(
    "tinystories_tests_conftest", Path(__file__).resolve().parent.parent / "tests" / "conftest.py"
)
_tests_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tests_conftest)
SHARED_DATA = _tests_conftest.SHARED_DATA
read_stories = _tests_conftest.read_stories
shared_data = _tests_conftest.shared_data
gpt2_files = _tests_conftest.gpt2_files
real_stories = _tests_conftest.real_stories

try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass
