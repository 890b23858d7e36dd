"""Fused LayerNorm (+ residual add) vs the plain-PyTorch reference, forward and every gradient."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import BF16, DEVICE, FP16, FP32, assert_close_to_gold, gold_and_lowp, requires_gpu, requires_kernels

from tinystories.kernels import FusedLayerNorm, layer_norm, reference

pytestmark = requires_kernels


def _inputs(shape, dtype, seed, *, residual: bool, bias: bool = True):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    c = shape[-1]

    def rand(*s, scale=1.0, shift=0.0):
        return (torch.randn(*s, generator=gen, device=DEVICE) * scale + shift).to(dtype).requires_grad_()

    x = rand(*shape, scale=2.0, shift=0.5)  # a non-zero mean exercises the centring
    weight, b = rand(c, scale=0.5, shift=1.0), rand(c, scale=0.5) if bias else None
    res = rand(*shape) if residual else None
    return x, weight, b, res


@pytest.mark.parametrize("dtype", [FP32, FP16, BF16])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_forward_and_gradients_match_reference(dtype, residual):
    # 2*13 = 26 rows: spans several row tiles and backward programs, with ragged tails; C=72 is not a power of two
    x, weight, bias, res = _inputs((2, 13, 72), dtype, seed=int(residual), residual=residual)
    inputs = [t for t in (x, weight, bias, res) if t is not None]

    def run(fn, x, weight, bias, *res):
        out = fn(x, weight, bias, 1e-5, res[0] if res else None)
        # weigh the returned sum differently from the normed output so both gradient paths are checked
        return out if not res else torch.cat([out[0], 0.5 * out[1]], dim=-1)

    (gold, gold_grads), (ref, ref_grads), grad_out = gold_and_lowp(lambda *a: run(reference.layer_norm, *a), inputs)
    out = run(layer_norm, *inputs)
    grads = torch.autograd.grad(out, inputs, grad_out.to(dtype))
    assert_close_to_gold("out", out, ref, gold)
    for name, g, rg, gg in zip(("dx", "dweight", "dbias", "dresidual"), grads, ref_grads, gold_grads):
        assert_close_to_gold(name, g, rg, gg)


def test_without_bias_and_with_unused_sum():
    x, weight, _, res = _inputs((9, 40), torch.float32, seed=3, residual=True, bias=False)
    y, _unused = layer_norm(x, weight, None, 1e-5, res)
    ry, _ = reference.layer_norm(x, weight, None, 1e-5, res)
    torch.testing.assert_close(y, ry, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(y)
    for g, rg in zip(
        torch.autograd.grad(y, (x, weight, res), grad_out), torch.autograd.grad(ry, (x, weight, res), grad_out)
    ):
        torch.testing.assert_close(g, rg, rtol=1e-4, atol=1e-5)


def test_fp32_weights_with_half_activations():
    """Mixed precision training keeps fp32 parameters: output in the activation dtype, grads in each input's dtype."""
    x, _, _, _ = _inputs((7, 24), torch.float16, seed=4, residual=False)
    layer = FusedLayerNorm(24).to(DEVICE)
    out = layer(x)
    assert out.dtype == torch.float16
    out.float().square().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float16
    expected = reference.layer_norm(x.float(), layer.weight, layer.bias)
    torch.testing.assert_close(out.float(), expected, rtol=2e-3, atol=2e-3)


def test_half_branch_output_onto_fp32_residual_stream():
    """Under autocast the branch output is half and the residual stream fp32: outputs promote like x + residual."""
    x, _, _, _ = _inputs((11, 40), torch.float16, seed=6, residual=False)
    _, weight, bias, res = _inputs((11, 40), torch.float32, seed=7, residual=True)
    y, s = layer_norm(x, weight, bias, 1e-5, res)
    ry, rs = reference.layer_norm(x, weight, bias, 1e-5, res)
    assert y.dtype == s.dtype == ry.dtype == torch.float32
    torch.testing.assert_close(y, ry, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(s, rs, rtol=0, atol=0)
    grad_out = torch.randn_like(y)
    grads = torch.autograd.grad(y + s, (x, res), grad_out)
    ref_grads = torch.autograd.grad(ry + rs, (x, res), grad_out)
    assert [g.dtype for g in grads] == [torch.float16, torch.float32]
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g.float(), rg.float(), rtol=2e-3, atol=2e-3)


def test_repeated_runs_are_bitwise_identical():
    x, weight, bias, res = _inputs((37, 48), torch.float16, seed=5, residual=True)
    grad_out = torch.randn_like(x)
    runs = []
    for _ in range(2):
        y, s = layer_norm(x, weight, bias, 1e-5, res)
        runs.append((y, s, *torch.autograd.grad(y + s, (x, weight, bias, res), grad_out)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_module_matches_nn_layernorm_state_dict_and_rejects_bad_shapes():
    ref = torch.nn.LayerNorm(16).to(DEVICE)
    layer = FusedLayerNorm(16).to(DEVICE)
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(3, 16, device=DEVICE)
    torch.testing.assert_close(layer(x), ref(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="weight/bias must have shape"):
        layer_norm(x, torch.ones(8, device=DEVICE), None)
    with pytest.raises(ValueError, match="residual"):
        layer_norm(x, layer.weight, layer.bias, residual=x[:2])


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("n,c", [(3001, 768), (2049, 64), (517, 1024)])
def test_gpu_sized_shapes(n, c):
    x, weight, bias, res = _inputs((n, c), torch.bfloat16, seed=c, residual=True)
    inputs = [x, weight, bias, res]

    def run(fn, x, weight, bias, res):
        y, s = fn(x, weight, bias, 1e-5, res)
        return torch.cat([y, 0.5 * s], dim=-1)

    (gold, gold_grads), (ref, ref_grads), grad_out = gold_and_lowp(lambda *a: run(reference.layer_norm, *a), inputs)
    out = run(layer_norm, *inputs)
    assert_close_to_gold("out", out, ref, gold)
    for name, g, rg, gg in zip(
        ("dx", "dweight", "dbias", "dresidual"),
        torch.autograd.grad(out, inputs, grad_out.to(out.dtype)),
        ref_grads,
        gold_grads,
    ):
        assert_close_to_gold(name, g, rg, gg)
