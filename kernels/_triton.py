"""Triton import, availability check and the kernel-or-reference dispatch shared by every kernel file.

Importing ``tinystories.kernels`` must work where Triton is absent (macOS, CPU-only CI images), so when the import
fails ``triton``/``tl`` become small stand-ins whose decorators leave the kernel functions as plain, never-launched
Python functions, and every functional form falls back to ``reference.py`` with a logged reason.
"""

from __future__ import annotations

import logging
import os
import types

import torch

log = logging.getLogger("tinystories.kernels")

try:
    import triton
    import triton.language as tl

    TRITON_IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - exercised only where triton is missing
    TRITON_IMPORT_ERROR = f"triton is not installed ({exc}); install the 'kernels' extra"

    def _passthrough_decorator(fn=None, **_kwargs):
        return fn if fn is not None else (lambda f: f)

    triton = types.SimpleNamespace(
        jit=_passthrough_decorator,
        autotune=lambda *a, **k: lambda f: f,
        Config=lambda *a, **k: None,
        cdiv=lambda a, b: -(-a // b),
        next_power_of_2=lambda n: 1 << max(0, int(n) - 1).bit_length(),
    )
    tl = types.SimpleNamespace(constexpr=lambda value=None: value)


def interpreter_active() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (tests on machines without a GPU)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def kernels_available() -> tuple[bool, str]:
    """(usable?, reason when not): the fused kernels need Triton plus a CUDA device or Triton's CPU interpreter."""
    if TRITON_IMPORT_ERROR is not None:
        return False, TRITON_IMPORT_ERROR
    if interpreter_active():
        return True, "running in Triton's CPU interpreter (TRITON_INTERPRET=1): correct but slow, for tests"
    if not torch.cuda.is_available():
        return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU in Triton's interpreter)"
    return True, ""


_fallback_logged: set[str] = set()


def use_kernels(name: str, *tensors: torch.Tensor) -> bool:
    """Whether ``name`` should launch its Triton kernel for these tensors; logs once per reason when it cannot."""
    usable, reason = kernels_available()
    if usable and any(t.numel() == 0 for t in tensors):
        usable, reason = False, "an input is empty"
    if usable:
        want_cuda = not interpreter_active()
        if all(t.is_cuda == want_cuda for t in tensors):
            return True
        reason = (
            "tensors are on CPU and no Triton interpreter is active"
            if want_cuda
            else "Triton's interpreter (TRITON_INTERPRET=1) only runs CPU tensors"
        )
    key = f"{name}: {reason}"
    if key not in _fallback_logged:
        _fallback_logged.add(key)
        log.warning("tinystories.kernels.%s falls back to the plain PyTorch reference: %s", name, reason)
    return False


def autotune_space(configs: list, interpreter_config) -> list:
    """The autotuner's candidates: one small config under the interpreter (slow, tiny test shapes), only the first
    (a good default) with TINYSTORIES_AUTOTUNE=0 (e.g. GPU test runs, where tuning every shape costs minutes)."""
    if interpreter_active():
        return [interpreter_config]
    if os.environ.get("TINYSTORIES_AUTOTUNE", "1") == "0":
        return configs[:1]
    return configs


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmul-like kernels run in: autocast's when it is on (custom ops are not autocast-aware),
    else the input's."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products (matching PyTorch's default of no TF32); fp16/bf16 use tensor cores."""
    return "ieee" if dtype == torch.float32 else "tf32"


def check_float(name: str, *tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise TypeError(f"{name}: expected float16, bfloat16 or float32 tensors, got {t.dtype}")
    if len({t.dtype for t in tensors}) > 1:
        raise TypeError(f"{name}: all inputs must share one dtype, got {[t.dtype for t in tensors]}")
