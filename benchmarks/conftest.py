"""Benchmarks share the tests' fixtures (``tests/_fixtures.py``, a plugin: pyproject's pytest ``pythonpath`` puts
``tests/`` on the path) and, without a GPU, run Triton kernels in its CPU interpreter (``bench_kernels.py``); each
benchmark prints ours vs the peer."""

import os

import torch

# Triton reads TRITON_INTERPRET when first imported: set it before the plugin and benchmark modules import anything.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest_plugins = ["_fixtures"]
