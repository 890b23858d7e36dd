"""Plain-PyTorch references of the four fused kernels: the ground truth of the tests and the fallback path.

Each function has exactly the signature and semantics of its fused counterpart in this package.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_mask(t: int, *, causal: bool = True, window: int | None = None, device=None) -> torch.Tensor | None:
    """(T, T) boolean mask of the keys each query may see: causal, and with ``window`` W only keys i-W+1..i."""
    if not causal:
        return None
    q_idx = torch.arange(t, device=device)[:, None]
    k_idx = torch.arange(t, device=device)[None, :]
    mask = k_idx <= q_idx
    if window is not None:
        mask &= k_idx > q_idx - window
    return mask


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    window: int | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """softmax(scale * q k^T, masked) v over (B, H, T, D) tensors; the softmax runs in fp32."""
    check_window(causal, window)
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    mask = attention_mask(q.shape[-2], causal=causal, window=window, device=q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)


def check_window(causal: bool, window: int | None) -> None:
    if window is not None and not causal:
        raise ValueError("attention: window is only defined for causal attention (query i sees keys i-W+1..i)")
    if window is not None and window < 1:
        raise ValueError(f"attention: window must be >= 1, got {window}")


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
    residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm over the last dim; with ``residual`` returns (layer_norm(x + residual), x + residual)."""
    if residual is None:
        return F.layer_norm(x, x.shape[-1:], weight, bias, eps)
    summed = x + residual
    return F.layer_norm(summed, summed.shape[-1:], weight, bias, eps), summed


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """GPT-2/GPT-Neo's tanh approximation of GELU (HF ``gelu_new``)."""
    return F.gelu(x, approximate="tanh")


def fused_mlp(
    x: torch.Tensor,
    fc_weight: torch.Tensor,
    fc_bias: torch.Tensor | None,
    proj_weight: torch.Tensor,
    proj_bias: torch.Tensor | None,
) -> torch.Tensor:
    """proj(gelu_new(fc(x))) with nn.Linear weight layouts: fc_weight (I, C), proj_weight (C, I)."""
    return F.linear(gelu_new(F.linear(x, fc_weight, fc_bias)), proj_weight, proj_bias)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """cross_entropy(hidden @ weight^T + bias, targets) with the logits materialized (in fp32 for the softmax)."""
    logits = F.linear(hidden.reshape(-1, hidden.shape[-1]), weight, bias).float()
    return F.cross_entropy(logits, targets.reshape(-1), ignore_index=ignore_index, reduction=reduction)
