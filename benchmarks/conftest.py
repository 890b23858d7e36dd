"""Benchmarks share the tests' fixtures (:mod:`tinystories.testing.fixtures`); each prints ours vs the peer."""

from tinystories.testing.fixtures import gpt2_files, real_stories, shared_data  # noqa: F401 (pytest fixtures)
