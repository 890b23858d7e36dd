"""Chunked LM head + cross-entropy vs the plain-PyTorch reference: ignore_index, reductions, accumulation."""

from __future__ import annotations

import importlib

import pytest
import torch
from kernel_checks import BF16, DEVICE, FP16, FP32, assert_close_to_gold, gold_and_lowp, requires_gpu, requires_kernels

from tinystories.kernels import LinearCrossEntropy, linear_cross_entropy, reference

pytestmark = requires_kernels
V = 331  # not a multiple of 64 (nor of the interpreter's 128-wide vocab blocks), like GPT-2's 50257


@pytest.fixture
def small_chunks(monkeypatch):
    """Force several token chunks on tiny inputs (8 rows of V logits per chunk at 2 bytes, 64-row minimum off)."""
    module = importlib.import_module("tinystories.kernels.linear_cross_entropy")
    monkeypatch.setattr(module, "_chunk_rows", lambda n, v, element_size: 8)


def _inputs(n, c, dtype, seed, *, bias=False, ignored=0, vocab=V):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    hidden = torch.randn(n, c, generator=gen, device=DEVICE).to(dtype).requires_grad_()
    weight = (torch.randn(vocab, c, generator=gen, device=DEVICE) * c**-0.5 * 3).to(dtype).requires_grad_()
    b = (torch.randn(vocab, generator=gen, device=DEVICE)).to(dtype).requires_grad_() if bias else None
    targets = torch.randint(0, vocab, (n,), generator=gen, device=DEVICE)
    targets[torch.randperm(n, generator=gen, device=DEVICE)[:ignored]] = -100
    return hidden, weight, b, targets


@pytest.mark.parametrize("dtype", [FP32, FP16, BF16])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_loss_and_gradients_match_reference(dtype, reduction, small_chunks):
    hidden, weight, bias, targets = _inputs(29, 24, dtype, seed=1, bias=reduction == "sum", ignored=5)
    inputs = [t for t in (hidden, weight, bias) if t is not None]

    def run(fn, hidden, weight, *bias):
        return fn(hidden, weight, targets, bias=bias[0] if bias else None, reduction=reduction)

    (gold, gold_grads), (ref, ref_grads), grad_out = gold_and_lowp(
        lambda *a: run(reference.linear_cross_entropy, *a), inputs
    )
    loss = run(linear_cross_entropy, *inputs)
    assert loss.dtype == torch.float32 and loss.shape == ()
    grads = torch.autograd.grad(loss, inputs, grad_out.float())
    assert_close_to_gold("loss", loss, ref, gold)
    for name, g, rg, gg in zip(("dhidden", "dweight", "dbias"), grads, ref_grads, gold_grads):
        assert g.dtype == dtype
        assert_close_to_gold(name, g, rg, gg)


def test_vocab_already_aligned_uses_the_weight_unpadded(small_chunks):
    """V a multiple of the padding (no copy of the weight), with a bias and several chunks."""
    hidden, weight, bias, targets = _inputs(20, 16, torch.float32, seed=9, bias=True, ignored=2, vocab=256)
    loss = linear_cross_entropy(hidden, weight, targets, bias=bias)
    expected = reference.linear_cross_entropy(hidden, weight, targets, bias=bias)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(
        torch.autograd.grad(loss, (hidden, weight, bias)), torch.autograd.grad(expected, (hidden, weight, bias))
    ):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


def test_ignored_rows_get_zero_gradient_and_custom_ignore_index():
    hidden, weight, _, targets = _inputs(12, 16, torch.float32, seed=2)
    targets[::3] = 7  # use class 7 as the padding label
    loss = linear_cross_entropy(hidden, weight, targets, ignore_index=7)
    expected = reference.linear_cross_entropy(hidden, weight, targets, ignore_index=7)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    (dh,) = torch.autograd.grad(loss, hidden)
    assert torch.all(dh[::3] == 0) and torch.all(dh[1::3].abs().sum(-1) > 0)


def test_all_rows_ignored_gives_nan_mean_like_pytorch_and_zero_gradients():
    hidden, weight, _, targets = _inputs(5, 8, torch.float32, seed=3)
    targets[:] = -100
    loss = linear_cross_entropy(hidden, weight, targets)
    assert torch.isnan(loss) and torch.isnan(reference.linear_cross_entropy(hidden, weight, targets))
    assert linear_cross_entropy(hidden, weight, targets, reduction="sum").item() == 0.0


def test_gradient_accumulation_over_micro_batches(small_chunks):
    """Two micro-batches, loss scaled by 1/2 each, gradients accumulated in .grad (tied weight as a leaf)."""
    hidden, weight, _, targets = _inputs(26, 16, torch.float32, seed=4, ignored=3)
    hidden2 = hidden.detach().clone().requires_grad_()
    weight2 = weight.detach().clone().requires_grad_()
    for half in (slice(0, 13), slice(13, 26)):
        (linear_cross_entropy(hidden[half], weight, targets[half]) / 2).backward()
        (reference.linear_cross_entropy(hidden2[half], weight2, targets[half]) / 2).backward()
    torch.testing.assert_close(weight.grad, weight2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(hidden.grad, hidden2.grad, rtol=1e-4, atol=1e-6)


def test_batched_shapes_frozen_weight_and_determinism():
    hidden, weight, _, targets = _inputs(2 * 9, 16, torch.float16, seed=5, ignored=2)
    hidden3, targets3 = hidden.view(2, 9, 16), targets.view(2, 9)
    frozen = weight.detach()
    runs = [linear_cross_entropy(hidden3, frozen, targets3) for _ in range(2)]
    grads = [torch.autograd.grad(r, hidden)[0] for r in runs]
    assert torch.equal(runs[0], runs[1]) and torch.equal(grads[0], grads[1])
    expected = reference.linear_cross_entropy(hidden3, frozen, targets3)
    torch.testing.assert_close(runs[0], expected, rtol=2e-3, atol=2e-3)


def test_no_grad_returns_only_the_loss():
    hidden, weight, _, targets = _inputs(10, 16, torch.float32, seed=6)
    with torch.no_grad():
        loss = LinearCrossEntropy()(hidden, weight, targets)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, reference.linear_cross_entropy(hidden, weight, targets), rtol=1e-5, atol=1e-5)


def test_bad_arguments_are_named():
    hidden, weight, _, targets = _inputs(4, 8, torch.float32, seed=7)
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(hidden, weight, targets, reduction="none")
    with pytest.raises(ValueError, match=r"weight must be \(V, 8\)"):
        linear_cross_entropy(hidden, weight[:, :4], targets)
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(hidden, weight, targets[:3])
    bad = targets.clone()
    bad[1] = V
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="outside"):
            linear_cross_entropy(hidden, weight, bad)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("chunked", [False, True], ids=["one-chunk", "chunks"])
def test_gpu_sized_shapes_gpt2_vocab(chunked, monkeypatch):
    if chunked:
        module = importlib.import_module("tinystories.kernels.linear_cross_entropy")
        monkeypatch.setattr(module, "_chunk_rows", lambda n, v, element_size: 192)
    hidden, weight, _, targets = _inputs(700, 128, torch.bfloat16, seed=8, ignored=30, vocab=50257)
    (gold, gold_grads), (ref, ref_grads), grad_out = gold_and_lowp(
        lambda h, w: reference.linear_cross_entropy(h, w, targets), [hidden, weight]
    )
    loss = linear_cross_entropy(hidden, weight, targets)
    assert_close_to_gold("loss", loss, ref, gold)
    for name, g, rg, gg in zip(
        ("dhidden", "dweight"), torch.autograd.grad(loss, (hidden, weight), grad_out.float()), ref_grads, gold_grads
    ):
        assert_close_to_gold(name, g, rg, gg)
