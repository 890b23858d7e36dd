"""Fused MLP (fc -> bias -> gelu_new -> proj) vs the plain-PyTorch reference, forward and every gradient."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import BF16, DEVICE, FP16, FP32, assert_close_to_gold, gold_and_lowp, requires_gpu, requires_kernels

from tinystories.kernels import FusedMLP, fused_mlp, reference

pytestmark = requires_kernels


def _inputs(shape, inter, dtype, seed, bias=True):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    c = shape[-1]

    def rand(*s, scale):
        return (torch.randn(*s, generator=gen, device=DEVICE) * scale).to(dtype).requires_grad_()

    x = rand(*shape, scale=1.0)
    tensors = [x, rand(inter, c, scale=c**-0.5 * 2), rand(inter, scale=0.5) if bias else None]
    tensors += [rand(c, inter, scale=inter**-0.5), rand(c, scale=0.5) if bias else None]
    return tensors


@pytest.mark.parametrize("dtype", [FP32, FP16, BF16])
def test_forward_and_gradients_match_reference(dtype):
    # 2*13 = 26 tokens, C=24, I=72: none of them a multiple of the interpreter's 16/32 blocks
    inputs = _inputs((2, 13, 24), 72, dtype, seed=1)
    (gold, gold_grads), (ref, ref_grads), grad_out = gold_and_lowp(reference.fused_mlp, inputs)
    out = fused_mlp(*inputs)
    grads = torch.autograd.grad(out, inputs, grad_out.to(dtype))
    assert out.dtype == dtype and out.shape == (2, 13, 24)
    assert_close_to_gold("out", out, ref, gold)
    for name, g, rg, gg in zip(
        ("dx", "dfc_weight", "dfc_bias", "dproj_weight", "dproj_bias"), grads, ref_grads, gold_grads
    ):
        assert_close_to_gold(name, g, rg, gg)


def test_without_biases_and_partial_gradients():
    x, fc_w, _, proj_w, _ = _inputs((11, 16), 40, torch.float32, seed=2, bias=False)
    frozen_fc = fc_w.detach()
    out = fused_mlp(x, frozen_fc, None, proj_w, None)
    expected = reference.fused_mlp(x, frozen_fc, None, proj_w, None)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(out)
    for g, rg in zip(
        torch.autograd.grad(out, (x, proj_w), grad_out), torch.autograd.grad(expected, (x, proj_w), grad_out)
    ):
        torch.testing.assert_close(g, rg, rtol=1e-4, atol=1e-5)


def test_saves_the_pre_activation_only():
    """The backward recomputes gelu_new: one (tokens x I) tensor is saved, where the reference keeps two."""
    inputs = _inputs((9, 16), 64, torch.float32, seed=3)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fused_mlp(*inputs)
    assert sum(t.numel() for t in saved if t.shape == (9, 64)) == 9 * 64
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        reference.fused_mlp(*inputs)
    assert sum(t.numel() for t in saved if t.shape == (9, 64)) >= 2 * 9 * 64


def test_repeated_runs_are_bitwise_identical_and_module_matches_functional():
    layer = FusedMLP(16, 48).to(DEVICE)
    x = torch.randn(3, 7, 16, device=DEVICE, requires_grad=True)
    runs = []
    for _ in range(2):
        out = layer(x)
        runs.append((out, *torch.autograd.grad(out.square().sum(), [x, *layer.parameters()])))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    expected = reference.fused_mlp(x, layer.c_fc.weight, layer.c_fc.bias, layer.c_proj.weight, layer.c_proj.bias)
    torch.testing.assert_close(runs[0][0], expected, rtol=1e-5, atol=1e-5)


def test_bad_shapes_are_named():
    x, fc_w, fc_b, proj_w, proj_b = _inputs((4, 8), 16, torch.float32, seed=4)
    with pytest.raises(ValueError, match="proj_weight"):
        fused_mlp(x, fc_w, fc_b, proj_w.t(), proj_b)
    with pytest.raises(ValueError, match="fc_bias"):
        fused_mlp(x, fc_w, fc_b[:3], proj_w, proj_b)


def test_autocast_runs_in_the_autocast_dtype():
    """Custom ops are not autocast-aware: the wrapper casts like autocast would (fp32 params, fp16 compute)."""
    x, fc_w, fc_b, proj_w, proj_b = _inputs((10, 16), 32, torch.float32, seed=5)
    with torch.autocast(DEVICE, dtype=torch.float16):
        out = fused_mlp(x, fc_w, fc_b, proj_w, proj_b)
        expected = reference.fused_mlp(x, fc_w, fc_b, proj_w, proj_b)
    assert out.dtype == expected.dtype == torch.float16
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)
    (g,) = torch.autograd.grad(out.float().sum(), fc_w)
    assert g.dtype == torch.float32


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_sized_shapes(dtype):
    inputs = _inputs((1000, 256), 1024, dtype, seed=6)  # several 128/256-wide tiles, ragged 1000 rows
    (gold, gold_grads), (ref, ref_grads), grad_out = gold_and_lowp(reference.fused_mlp, inputs)
    out = fused_mlp(*inputs)
    assert_close_to_gold("out", out, ref, gold)
    for name, g, rg, gg in zip(
        ("dx", "dfc_weight", "dfc_bias", "dproj_weight", "dproj_bias"),
        torch.autograd.grad(out, inputs, grad_out.to(dtype)),
        ref_grads,
        gold_grads,
    ):
        assert_close_to_gold(name, g, rg, gg)
