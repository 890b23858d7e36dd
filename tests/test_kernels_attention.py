"""Fused attention vs the plain-PyTorch reference: causal, sliding window edge cases, head dims 4/20/48/64."""

from __future__ import annotations

import importlib
import logging

import pytest
import torch
from kernel_checks import BF16, DEVICE, FP16, FP32, assert_close_to_gold, gold_and_lowp, requires_gpu, requires_kernels

from tinystories.kernels import FusedAttention, attention, reference

pytestmark = requires_kernels


def _qkv(b, h, t, d, dtype, seed):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    return [torch.randn(b, h, t, d, generator=gen, device=DEVICE, dtype=dtype).requires_grad_() for _ in range(3)]


# T=37 spans three 16-row interpreter blocks with a ragged tail; windows below, equal to and above the block size.
CASES = [
    pytest.param(4, None, 1.0, FP32.values[0], id="d4-causal-fp32"),
    pytest.param(48, 5, 1.0, FP32.values[0], id="d48-w5-fp32"),
    pytest.param(64, 16, 0.125, FP16.values[0], id="d64-w16-fp16"),
    pytest.param(20, 1, 1.0, FP16.values[0], id="d20-w1-fp16"),
    pytest.param(48, 100, 1.0, FP32.values[0], id="d48-w>=T-fp32"),
    pytest.param(4, 3, 1.0, FP16.values[0], id="d4-w3-fp16"),
    pytest.param(48, 7, 1.0, BF16.values[0], marks=BF16.marks, id="d48-w7-bf16"),
    pytest.param(64, None, 0.125, BF16.values[0], marks=BF16.marks, id="d64-causal-bf16"),
]


@pytest.mark.parametrize("head_dim,window,scale,dtype", CASES)
def test_forward_and_gradients_match_reference(head_dim, window, scale, dtype):
    inputs = _qkv(2, 2, 37, head_dim, dtype, seed=head_dim + (window or 0))
    (gold, gold_grads), (ref, ref_grads), grad_out = gold_and_lowp(
        lambda q, k, v: reference.attention(q, k, v, window=window, scale=scale), inputs
    )
    out = attention(*inputs, window=window, scale=scale)
    grads = torch.autograd.grad(out, inputs, grad_out.to(dtype))
    assert out.dtype == dtype
    assert_close_to_gold("out", out, ref, gold)
    for name, g, rg, gg in zip(("dq", "dk", "dv"), grads, ref_grads, gold_grads):
        assert_close_to_gold(name, g, rg, gg)


@pytest.mark.parametrize("window", [31, None])
def test_tiles_inside_the_window_skip_the_mask(window):
    """T=70 in 16-wide tiles: some tiles lie wholly inside the window and below the diagonal (no mask applied),
    others straddle the window edge or the diagonal."""
    inputs = _qkv(1, 1, 70, 8, torch.float32, seed=9)
    (gold, gold_grads), (ref, ref_grads), grad_out = gold_and_lowp(
        lambda q, k, v: reference.attention(q, k, v, window=window), inputs
    )
    out = attention(*inputs, window=window)
    assert_close_to_gold("out", out, ref, gold)
    for name, g, rg, gg in zip(
        ("dq", "dk", "dv"), torch.autograd.grad(out, inputs, grad_out.float()), ref_grads, gold_grads
    ):
        assert_close_to_gold(name, g, rg, gg)


def test_non_causal_matches_reference():
    inputs = _qkv(1, 2, 21, 8, torch.float32, seed=3)
    (gold, gold_grads), (ref, ref_grads), grad_out = gold_and_lowp(
        lambda q, k, v: reference.attention(q, k, v, causal=False, scale=0.5), inputs
    )
    out = attention(*inputs, causal=False, scale=0.5)
    assert_close_to_gold("out", out, ref, gold)
    for g, rg, gg in zip(torch.autograd.grad(out, inputs, grad_out.float()), ref_grads, gold_grads):
        assert_close_to_gold("grad", g, rg, gg)


def test_window_one_returns_values_and_window_at_least_t_is_causal():
    q, k, v = _qkv(1, 1, 19, 4, torch.float32, seed=5)
    torch.testing.assert_close(attention(q, k, v, window=1), v, rtol=0, atol=1e-6)
    torch.testing.assert_close(attention(q, k, v, window=19), attention(q, k, v), rtol=0, atol=0)
    torch.testing.assert_close(attention(q, k, v, window=1000), attention(q, k, v), rtol=0, atol=0)


def test_strided_views_from_btd_layout():
    """The model's q/k/v arrive as (B, T, H, D) transposed to (B, H, T, D): strides, not copies."""
    gen = torch.Generator(device=DEVICE).manual_seed(7)
    qkv = torch.randn(2, 23, 3, 2, 8, generator=gen, device=DEVICE).requires_grad_()
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    out = attention(q, k, v, window=6)
    expected = reference.attention(q, k, v, window=6)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, qkv, grad_out)
    (rg,) = torch.autograd.grad(expected, qkv, grad_out)
    torch.testing.assert_close(g, rg, rtol=1e-4, atol=1e-5)


def test_repeated_runs_are_bitwise_identical():
    q, k, v = _qkv(1, 2, 37, 48, torch.float16, seed=11)
    grad_out = torch.randn_like(q)
    runs = []
    for _ in range(2):
        out = attention(q, k, v, window=9)
        runs.append((out, *torch.autograd.grad(out, (q, k, v), grad_out)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_module_and_bad_arguments():
    q, k, v = _qkv(1, 1, 5, 4, torch.float32, seed=0)
    layer = FusedAttention(window=2)
    torch.testing.assert_close(layer(q, k, v), reference.attention(q, k, v, window=2), rtol=1e-5, atol=1e-6)
    assert "window=2" in repr(layer)
    with pytest.raises(ValueError, match="window"):
        attention(q, k, v, causal=False, window=3)
    with pytest.raises(ValueError, match="window must be >= 1"):
        FusedAttention(window=0)
    with pytest.raises(ValueError, match="shape"):
        attention(q, k[:, :, :4], v)
    with pytest.raises(TypeError, match="dtype"):
        attention(q, k.half(), v)


def test_empty_sequence_takes_the_reference_path():
    q = torch.zeros(2, 3, 0, 8, device=DEVICE, requires_grad=True)
    out = attention(q, q, q)
    assert out.shape == (2, 3, 0, 8)
    out.sum().backward()


def test_torch_compile_traces_the_custom_ops():
    q, k, v = _qkv(1, 2, 17, 8, torch.float32, seed=2)
    compiled = torch.compile(lambda q, k, v: attention(q, k, v, window=4).sum(), backend="aot_eager", fullgraph=True)
    loss = compiled(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    expected = reference.attention(q, k, v, window=4).sum()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-4)
    for g, rg in zip(grads, torch.autograd.grad(expected, (q, k, v))):
        torch.testing.assert_close(g, rg, rtol=1e-4, atol=1e-5)


def test_falls_back_to_reference_with_a_logged_reason(monkeypatch, caplog):
    attention_module = importlib.import_module("tinystories.kernels.attention")
    triton_module = importlib.import_module("tinystories.kernels._triton")
    monkeypatch.setattr(triton_module, "kernels_available", lambda: (False, "no GPU in this test"))
    monkeypatch.setattr(triton_module, "_fallback_logged", set())
    called = []
    monkeypatch.setattr(attention_module, "AttentionFunction", type("Boom", (), {"apply": called.append}))
    q, k, v = _qkv(1, 1, 6, 4, torch.float32, seed=1)
    with caplog.at_level(logging.WARNING, logger="tinystories.kernels"):
        out = attention(q, k, v)
    assert not called
    torch.testing.assert_close(out, reference.attention(q, k, v))
    assert "no GPU in this test" in caplog.text


@pytest.mark.parametrize(
    "head_dim,window,dtype",
    [(48, 64, torch.bfloat16), (4, None, torch.bfloat16), (128, 100, torch.float16), (48, None, torch.float16)],
)
@pytest.mark.gpu
@requires_gpu
def test_gpu_sized_shapes(head_dim, window, dtype):
    inputs = _qkv(2, 3, 300, head_dim, dtype, seed=head_dim)
    (gold, gold_grads), (ref, ref_grads), grad_out = gold_and_lowp(
        lambda q, k, v: reference.attention(q, k, v, window=window), inputs
    )
    out = attention(*inputs, window=window)
    assert_close_to_gold("out", out, ref, gold)
    for name, g, rg, gg in zip(
        ("dq", "dk", "dv"), torch.autograd.grad(out, inputs, grad_out.to(dtype)), ref_grads, gold_grads
    ):
        assert_close_to_gold(name, g, rg, gg)
