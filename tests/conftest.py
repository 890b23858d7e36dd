"""The project's shared fixtures (data locations, Triton's CPU interpreter): :mod:`tinystories.testing.fixtures`."""

import os

import pytest
from _evaluate_fixtures import tiny_run  # noqa: F401 (the evaluation tests' tiny checkpoints, a pytest fixture)
from _train_fixtures import dataset  # noqa: F401 (the trainer tests' tiny dataset, a pytest fixture)

from tinystories.testing.fixtures import gpt2_files, real_stories, shared_data, tiny_shards  # noqa: F401 (fixtures)


@pytest.fixture(autouse=True)
def _columns_unchanged():
    """CLIs called in-process widen ``COLUMNS`` for piped output; keep that out of later tests and pytest's own."""
    before = os.environ.get("COLUMNS")
    yield
    if before is None:
        os.environ.pop("COLUMNS", None)
    else:
        os.environ["COLUMNS"] = before
