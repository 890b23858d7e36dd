"""Fused Triton kernels for TinyStories-sized GPT-Neo models, importable as ``tinystories.kernels``.

    from tinystories.kernels import FusedAttention, FusedLayerNorm, FusedMLP, LinearCrossEntropy   # nn.Modules
    from tinystories.kernels import attention, layer_norm, fused_mlp, linear_cross_entropy         # functional

Each functional form runs its Triton kernel on CUDA tensors (or on CPU under ``TRITON_INTERPRET=1``) and otherwise
falls back to the plain-PyTorch twin in ``tinystories.kernels.reference``, logging the reason once. Without Triton
installed this package still imports (the kernel files see stand-ins for ``triton``), ``kernels_available()`` says
why kernels cannot run, and every call takes the reference path.
"""

from __future__ import annotations

import importlib

from ._triton import kernels_available

# The functions share their files' names: these imports rebind the package attributes from the submodules to them.
from .attention import FusedAttention, attention
from .layer_norm import FusedLayerNorm, layer_norm
from .linear_cross_entropy import LinearCrossEntropy, linear_cross_entropy
from .mlp import FusedMLP, fused_mlp

# `from . import reference`, spelled so that mypy knows it for a module: mypy sees this package without its
# submodules (they are kernels/*.py, checked as `kernels.*`: see pyproject.toml), so it would look for an attribute.
reference = importlib.import_module(".reference", __name__)

__all__ = [
    "FusedAttention",
    "attention",
    "FusedLayerNorm",
    "layer_norm",
    "LinearCrossEntropy",
    "linear_cross_entropy",
    "FusedMLP",
    "fused_mlp",
    "kernels_available",
    "reference",
]
