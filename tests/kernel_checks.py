"""Helpers shared by tests/test_kernels_*.py: device choice, dtype parametrization and the error-budget check."""

from __future__ import annotations

import pytest
import torch

from tinystories.kernels import kernels_available
from tinystories.kernels._triton import interpreter_active

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

requires_kernels = pytest.mark.skipif(not kernels_available()[0], reason=kernels_available()[1])

BF16 = pytest.param(
    torch.bfloat16,
    marks=pytest.mark.skipif(
        interpreter_active(), reason="Triton's CPU interpreter computes bf16 arithmetic wrongly; bf16 runs on GPU"
    ),
    id="bf16",
)
FP16 = pytest.param(torch.float16, id="fp16")
FP32 = pytest.param(torch.float32, id="fp32")

# Floor of the allowed error relative to the gold's magnitude, per dtype (for values where the low-precision
# reference happens to be exact).
_FLOOR = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_close_to_gold(name: str, ours: torch.Tensor, ref_lowp: torch.Tensor, gold: torch.Tensor, slack: float = 3.0):
    """Our error against the float64 gold must stay within ``slack`` times the plain-PyTorch reference's own error
    at the same input precision (plus a small floor), so the tolerance tracks what the dtype can deliver."""
    assert ours.shape == gold.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(gold.shape)}"
    assert torch.isfinite(ours).all(), f"{name}: non-finite values"
    gold = gold.double()
    err_ours = (ours.double() - gold).abs().max().item()
    err_ref = (ref_lowp.double() - gold).abs().max().item()
    scale = max(gold.abs().max().item(), 1e-2)  # gradients that are exactly 0 in theory
    budget = slack * err_ref + _FLOOR[ours.dtype] * scale
    assert err_ours <= budget, f"{name}: max error {err_ours:.3g} > budget {budget:.3g} (reference's own {err_ref:.3g})"


def gold_and_lowp(fn, inputs: list[torch.Tensor], grad_out_seed: int = 1):
    """Run ``fn`` on float64 copies (gold) and on the inputs themselves (reference at their precision); returns
    ((gold_out, gold_grads), (lowp_out, lowp_grads), grad_out) with a fixed random output gradient."""
    results = []
    grad_out = None
    for dtype in (torch.float64, None):
        xs = [x.detach().to(dtype or x.dtype).requires_grad_(x.requires_grad) for x in inputs]
        out = fn(*xs)
        if grad_out is None:
            gen = torch.Generator(device=out.device).manual_seed(grad_out_seed)
            grad_out = torch.randn(out.shape, generator=gen, device=out.device, dtype=torch.float64)
        grads = torch.autograd.grad(out, [x for x in xs if x.requires_grad], grad_out.to(out.dtype))
        results.append((out.detach(), grads))
    return results[0], results[1], grad_out


# Shapes that span the GPU configs' real (64-128 wide) blocks with ragged tails; far too slow for the interpreter.
requires_gpu = pytest.mark.skipif(DEVICE != "cuda", reason="GPU-sized shapes (too slow in Triton's CPU interpreter)")


def plain_reference(seed: int = 0):
    """A small 2-layer GPT-Neo on DEVICE, a batch longer than its local window (one row's tail ignored), and the
    plain path's output and gradients on it: what another ``impl`` of the same model must reproduce.

    Returns (model with zeroed gradients, x, y, plain output, plain gradients by parameter name)."""
    from tinystories.model import GPTNeo, GPTNeoConfig

    torch.manual_seed(seed)
    model = GPTNeo(
        GPTNeoConfig(
            vocab_size=100, hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=32, window_size=8
        )
    ).to(DEVICE)
    x = torch.randint(0, 100, (2, 24), device=DEVICE)
    y = torch.randint(0, 100, (2, 24), device=DEVICE)
    y[1, -5:] = -100
    plain = model(x, y)
    plain.loss.backward()
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return model, x, y, plain, plain_grads


def assert_same_gradients(model, plain_grads) -> None:
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain_grads[name], atol=1e-4, rtol=1e-3, msg=name)
