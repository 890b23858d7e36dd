"""The project's shared fixtures (data locations, Triton's CPU interpreter): :mod:`tinystories.testing.fixtures`."""

from tinystories.testing.fixtures import gpt2_files, real_stories, shared_data  # noqa: F401 (pytest fixtures)
from _train_fixtures import dataset  # noqa: F401,E402 (the trainer tests' tiny dataset, a pytest fixture)
