"""A small GPT-Neo-like stack built from the fused kernels trains along the same loss curve as its reference twin,
and torch.compile traces all four kernels' custom ops without graph breaks."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DEVICE, requires_kernels
from torch import nn

import tinystories.kernels as fused_ops
from tinystories.kernels import reference as reference_ops

pytestmark = requires_kernels
VOCAB, WIDTH, HEADS, LAYERS, WINDOWS = 67, 32, 4, 2, (None, 5)  # global then local attention, like GPT-Neo


class MiniGPT(nn.Module):
    """Pre-LN transformer whose four hot spots call ``ops`` (this package or its reference: same signatures)."""

    def __init__(self, ops, max_len: int = 32):
        super().__init__()
        self.ops = ops
        self.wte = nn.Embedding(VOCAB, WIDTH)
        self.wpe = nn.Embedding(max_len, WIDTH)
        self.norms = nn.ModuleList(nn.LayerNorm(WIDTH) for _ in range(2 * LAYERS + 1))
        self.qkv = nn.ModuleList(nn.Linear(WIDTH, 3 * WIDTH, bias=False) for _ in range(LAYERS))
        self.out = nn.ModuleList(nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS))
        self.fc = nn.ModuleList(nn.Linear(WIDTH, 4 * WIDTH) for _ in range(LAYERS))
        self.proj = nn.ModuleList(nn.Linear(4 * WIDTH, WIDTH) for _ in range(LAYERS))

    def _norm(self, i, x, residual=None):
        return self.ops.layer_norm(x, self.norms[i].weight, self.norms[i].bias, 1e-5, residual)

    def forward(self, idx, targets):
        b, t = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        h = self._norm(0, x)
        for layer in range(LAYERS):
            q, k, v = self.qkv[layer](h).view(b, t, 3, HEADS, WIDTH // HEADS).unbind(2)
            a = self.ops.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), window=WINDOWS[layer])
            h, x = self._norm(2 * layer + 1, self.out[layer](a.transpose(1, 2).reshape(b, t, WIDTH)), residual=x)
            m = self.ops.fused_mlp(
                h, self.fc[layer].weight, self.fc[layer].bias, self.proj[layer].weight, self.proj[layer].bias
            )
            h, x = self._norm(2 * layer + 2, m, residual=x)
        return self.ops.linear_cross_entropy(h, self.wte.weight, targets)  # tied LM head


def _batch(step: int):
    gen = torch.Generator(device=DEVICE).manual_seed(100 + step)
    idx = torch.randint(0, VOCAB, (2, 19), generator=gen, device=DEVICE)
    targets = torch.roll(idx, -1, dims=1)
    targets[1, -4:] = -100  # a padded story tail
    return idx, targets


def _train(ops, steps: int = 4) -> list[float]:
    torch.manual_seed(0)
    model = MiniGPT(ops).to(DEVICE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(steps):
        loss = model(*_batch(step))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.mark.slow
def test_fused_model_follows_the_reference_loss_curve():
    fused, plain = _train(fused_ops), _train(reference_ops)
    assert plain[-1] < plain[0]  # it does learn, so the curves carry signal
    torch.testing.assert_close(torch.tensor(fused), torch.tensor(plain), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_torch_compile_traces_every_kernel_without_graph_breaks():
    torch.manual_seed(0)
    model = MiniGPT(fused_ops).to(DEVICE)
    idx, targets = _batch(0)
    eager_loss = model(idx, targets)
    eager_grads = torch.autograd.grad(eager_loss, list(model.parameters()))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    loss = compiled(idx, targets)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(loss, eager_loss, rtol=1e-6, atol=1e-6)
    for g, eg in zip(grads, eager_grads):
        torch.testing.assert_close(g, eg, rtol=1e-5, atol=1e-6)
