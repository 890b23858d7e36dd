"""FlashAttention-2 style causal and causal sliding-window attention (GPT-Neo global and local layers).

Forward: one program per (query block, batch*head) streams the key blocks the block can see with an online
softmax in fp32 and stores the output plus the base-2 log-sum-exp of each row. Sliding window W (query i sees keys
i-W+1..i): the key loop starts at the first block inside the window, so the cost grows with T*W rather than T^2.
Backward: two atomics-free (hence deterministic) kernels, one program per key block for dK/dV and one per query
block for dQ, recomputing the probabilities from the saved log-sum-exp. Head dims that are not powers of two (or
are below the tensor-core minimum of 16, e.g. 4) are padded inside the kernel with masked loads.

The kernels and their custom ops live in :mod:`.attention_fwd` and :mod:`.attention_bwd`; this file composes them
into the autograd Function, the functional form and the module.
"""

import torch
from torch import Tensor, nn

from . import reference
from ._triton import check_float, compute_dtype, use_kernels
from .attention_bwd import attention_bwd
from .attention_fwd import attention_fwd


class AttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, causal: bool, window: int | None, scale: float) -> Tensor:
        o, lse = attention_fwd(q, k, v, causal, window, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.window, ctx.scale = causal, window, scale
        return o

    @staticmethod
    def backward(ctx, do: Tensor):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = attention_bwd(do, q, k, v, o, lse, ctx.causal, ctx.window, ctx.scale)
        return dq, dk, dv, None, None, None


def attention(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool = True, window: int | None = None, scale: float = 1.0
) -> Tensor:
    """softmax(scale * q k^T) v for (B, H, T, D) q, k, v; with ``window`` W query i sees only keys i-W+1..i.

    ``scale`` defaults to 1.0 as in GPT-Neo (which has no 1/sqrt(D)); pass ``head_dim ** -0.5`` for the usual one.
    """
    reference.check_window(causal, window)
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"attention: q, k, v must share one (B, H, T, D) shape, got {q.shape}, {k.shape}, {v.shape}")
    check_float("attention", q, k, v)
    if q.shape[-1] > 128:
        raise ValueError(f"attention: head_dim {q.shape[-1]} > 128 is not supported")
    if not use_kernels("attention", q, k, v):
        return reference.attention(q, k, v, causal=causal, window=window, scale=scale)
    dtype = compute_dtype(q)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    return AttentionFunction.apply(q, k, v, causal, window, float(scale))


class FusedAttention(nn.Module):
    """Drop-in attention core: (B, H, T, D) q, k, v -> (B, H, T, D); window=None is plain causal attention."""

    def __init__(self, *, causal: bool = True, window: int | None = None, scale: float = 1.0):
        super().__init__()
        reference.check_window(causal, window)
        self.causal, self.window, self.scale = causal, window, scale

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return attention(q, k, v, causal=self.causal, window=self.window, scale=self.scale)

    def extra_repr(self) -> str:
        return f"causal={self.causal}, window={self.window}, scale={self.scale}"


__all__ = ["AttentionFunction", "FusedAttention", "attention"]
