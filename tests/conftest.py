"""Every test's fixtures: the shared data and the checkpoint builder (``_fixtures``, shared with ``benchmarks/``),
the evaluation tests' tiny checkpoints (``_evaluate_fixtures``) and the trainer tests' dataset (``_train_fixtures``),
all loaded as plugins; and Triton's CPU interpreter when there is no GPU."""

import os

import pytest
import torch

# Triton reads TRITON_INTERPRET when first imported: set it before the plugins and test modules import anything.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest_plugins = ["_fixtures", "_evaluate_fixtures", "_train_fixtures"]


@pytest.fixture(autouse=True)
def _columns_unchanged():
    """CLIs called in-process widen ``COLUMNS`` for piped output; keep that out of later tests and pytest's own."""
    before = os.environ.get("COLUMNS")
    yield
    if before is None:
        os.environ.pop("COLUMNS", None)
    else:
        os.environ["COLUMNS"] = before
