"""The project's shared fixtures (data locations, Triton's CPU interpreter): :mod:`tinystories.testing.fixtures`."""

from tinystories.testing.fixtures import gpt2_files, real_stories, shared_data  # noqa: F401 (pytest fixtures)
from tinystories.testing.fixtures import tiny_shards  # noqa: F401 (a pytest fixture)
