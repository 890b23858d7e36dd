"""LM head + cross-entropy in token chunks: the (tokens x vocab) logits are never materialized.

Per chunk of rows: cuBLAS computes the chunk's logits, one Triton program per row makes two passes over them
(online log-sum-exp, then softmax - one_hot scaled by 1/valid-tokens written in place of the logits), and two more
matmuls turn that into the chunk's dHidden and its share of dWeight (accumulated in fp32). Gradients are thus
produced during the forward (like Liger-Kernel) and the backward only scales them by the incoming gradient, which
keeps gradient accumulation over micro-batches exact.

The vocabulary is padded to a multiple of ``VOCAB_ALIGN`` (a zero-filled copy of the weight): cuBLAS only uses its
fast tensor-core kernels when every matrix's contiguous extent is 16-byte aligned, and V = 50257 is odd, which
makes all three matmuls several times slower (the plain PyTorch path and the first GPU run showed it). The padded
vocab rows have zero weight, so their logits are finite (0 + zero bias) and add nothing to dHidden; their dWeight
rows are dropped. Extra memory: the padded weight copy, one chunk of logits, and dWeight in fp32.
"""

import torch
from torch import Tensor, nn

from . import reference
from ._triton import check_float, compute_dtype, interpreter_active, tl, triton, use_kernels

# Logits of one chunk take at most this many bytes; chunks are whole multiples of ROW_ALIGN rows (cuBLAS tiles).
CHUNK_BYTES = 160 * 2**20
ROW_ALIGN = 128
VOCAB_ALIGN = 128
# The fallback dWeight accumulation (no fp32-output cuBLAS) goes through half-precision temporaries of this many rows.
_ACCUMULATE_SLAB_ROWS = 8192
_REDUCTIONS = ("mean", "sum")


@triton.jit
def _online_logsumexp(m, s, x):
    """Per-lane running max and scaled sum of exp; the finite start value keeps masked lanes (-inf) NaN-free."""
    m_new = tl.maximum(m, x)
    return m_new, s * tl.exp(m - m_new) + tl.exp(x - m_new)


@triton.jit
def _softmax_minus_one_hot(x, idx, lse, target, scale):
    return (tl.exp(x - lse) - tl.where(idx == target, 1.0, 0.0)) * scale


@triton.jit
def _cross_entropy_rows_kernel(
    LOGITS,
    stride_row,
    TARGETS,
    LOSS,
    GRAD_SCALE,
    V,
    ignore_index,
    WRITE_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """Loss of one row of logits; with WRITE_GRAD, overwrite the row by (softmax - one_hot(target)) * scale.

    Whole BLOCK_V blocks load without a mask (vectorized: rows start 16-byte aligned, the row stride is the padded
    vocab); only the vocab's ragged tail is masked. Padding columns (>= V) are left as they are."""
    row = tl.program_id(0)
    LOGITS += row.to(tl.int64) * stride_row
    target = tl.load(TARGETS + row)
    ignored = target == ignore_index
    cols = tl.arange(0, BLOCK_V)
    v_full = V // BLOCK_V * BLOCK_V
    m = tl.full([BLOCK_V], -1.0e30, dtype=tl.float32)
    s = tl.zeros([BLOCK_V], dtype=tl.float32)
    for start in tl.range(0, v_full, BLOCK_V, loop_unroll_factor=2):  # two blocks' loads in flight per step
        m, s = _online_logsumexp(m, s, tl.load(LOGITS + start + cols).to(tl.float32))
    if v_full < V:
        tail = tl.load(LOGITS + v_full + cols, mask=v_full + cols < V, other=float("-inf")).to(tl.float32)
        m, s = _online_logsumexp(m, s, tail)
    row_max = tl.max(m, 0)
    lse = row_max + tl.log(tl.sum(s * tl.exp(m - row_max), 0))
    safe_target = tl.where(ignored, 0, target)
    target_logit = tl.load(LOGITS + safe_target).to(tl.float32)
    tl.store(LOSS + row, tl.where(ignored, 0.0, lse - target_logit))
    if WRITE_GRAD:
        scale = tl.where(ignored, 0.0, tl.load(GRAD_SCALE))
        for start in tl.range(0, v_full, BLOCK_V, loop_unroll_factor=2):
            x = tl.load(LOGITS + start + cols).to(tl.float32)
            grad = _softmax_minus_one_hot(x, start + cols, lse, safe_target, scale)
            tl.store(LOGITS + start + cols, grad.to(LOGITS.dtype.element_ty))
        if v_full < V:
            idx = v_full + cols
            x = tl.load(LOGITS + idx, mask=idx < V, other=0.0).to(tl.float32)
            grad = _softmax_minus_one_hot(x, idx, lse, safe_target, scale)
            tl.store(LOGITS + idx, grad.to(LOGITS.dtype.element_ty), mask=idx < V)


def _chunk_rows(n: int, v: int, element_size: int) -> int:
    """Rows per chunk: as many whole ROW_ALIGN blocks as CHUNK_BYTES of padded logits allow (at least one)."""
    rows = CHUNK_BYTES // (_round_up(v, VOCAB_ALIGN) * element_size) // ROW_ALIGN * ROW_ALIGN
    return min(n, max(ROW_ALIGN, rows))


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def _padded_rows(t: Tensor, rows: int) -> Tensor:
    """``t`` with zero rows appended up to ``rows`` (``t`` itself when it already has that many)."""
    if t.shape[0] == rows:
        return t
    out = t.new_zeros((rows, *t.shape[1:]))
    out[: t.shape[0]] = t
    return out


_fp32_out_matmul_works: bool | None = None  # whether this torch has cuBLAS half-in/fp32-out addmm (>= 2.8, CUDA)


def _accumulate_fp32(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """acc (fp32) += a @ b, letting cuBLAS write fp32 directly where this torch can; otherwise through half-precision
    temporaries of a few rows at a time (never a whole (V, C) copy)."""
    global _fp32_out_matmul_works
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
        return
    if acc.is_cuda and _fp32_out_matmul_works is not False:
        try:
            torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
            _fp32_out_matmul_works = True
            return
        except (TypeError, RuntimeError, NotImplementedError):
            _fp32_out_matmul_works = False
    for start in range(0, a.shape[0], _ACCUMULATE_SLAB_ROWS):
        end = min(start + _ACCUMULATE_SLAB_ROWS, a.shape[0])
        acc[start:end] += torch.mm(a[start:end], b)


def _check_targets(targets: Tensor, v: int, ignore_index: int) -> None:
    bad = ((targets < 0) | (targets >= v)) & (targets != ignore_index)
    message = f"linear_cross_entropy: a target is outside [0, {v}) and is not ignore_index={ignore_index}"
    if targets.is_cuda:
        torch._assert_async(~bad.any(), message)  # no host sync on the training path
    elif bad.any():
        raise ValueError(message)


@torch.library.custom_op("tinystories::linear_cross_entropy_fwd", mutates_args=())
def _linear_cross_entropy_fwd(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    bias: Tensor | None,
    ignore_index: int,
    reduction: str,
    need_hidden_grad: bool,
    need_weight_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, dloss/dhidden, dloss/dweight, dloss/dbias) for 2-D hidden; unrequested gradients come back empty."""
    n, c = hidden.shape
    v = weight.shape[0]
    _check_targets(targets, v, ignore_index)
    write_grad = need_hidden_grad or need_weight_grad
    valid = (targets != ignore_index).sum()
    # mean: F.cross_entropy's sum over the valid rows / their count (NaN when none is valid, like PyTorch)
    grad_scale = (1.0 / valid.clamp(min=1)).float() if reduction == "mean" else torch.ones((), device=hidden.device)
    row_loss = torch.empty(n, device=hidden.device, dtype=torch.float32)
    d_hidden = torch.empty_like(hidden) if need_hidden_grad else hidden.new_empty(0)
    block_v = 128 if interpreter_active() else 4096
    # zero-padded vocab: every matmul dimension (but the last chunk's rows) is a multiple of VOCAB_ALIGN / ROW_ALIGN
    v_pad = _round_up(v, VOCAB_ALIGN)
    weight_pad = _padded_rows(weight, v_pad)
    bias_pad = _padded_rows(bias, v_pad) if bias is not None else None
    d_weight32 = torch.zeros((v_pad, c), device=weight.device, dtype=torch.float32) if need_weight_grad else None
    d_bias32 = (
        torch.zeros(v_pad, device=weight.device, dtype=torch.float32) if need_weight_grad and bias is not None else None
    )
    rows = _chunk_rows(n, v, hidden.element_size())
    logits_buffer = torch.empty((min(rows, n), v_pad), device=hidden.device, dtype=hidden.dtype)
    for start in range(0, n, rows):
        end = min(start + rows, n)
        h = hidden[start:end]
        logits = logits_buffer[: end - start]
        if bias_pad is not None:
            torch.addmm(bias_pad, h, weight_pad.t(), out=logits)
        else:
            torch.mm(h, weight_pad.t(), out=logits)
        _cross_entropy_rows_kernel[(end - start,)](
            logits,
            logits.stride(0),
            targets[start:end],
            row_loss[start:end],
            grad_scale,
            v,
            ignore_index,
            WRITE_GRAD=write_grad,
            BLOCK_V=block_v,
            num_warps=1 if interpreter_active() else 8,
        )
        if need_hidden_grad:
            torch.mm(logits, weight_pad, out=d_hidden[start:end])
        if d_weight32 is not None:  # need_weight_grad
            _accumulate_fp32(d_weight32, logits.t(), h)
            if d_bias32 is not None:
                d_bias32 += logits.sum(0, dtype=torch.float32)
    del logits_buffer, logits, weight_pad, bias_pad  # free before the dtype conversions below
    loss = row_loss.sum()
    if reduction == "mean":
        loss = loss / valid
    d_weight = d_weight32[:v].to(weight.dtype) if d_weight32 is not None else weight.new_empty(0)
    d_bias = d_bias32[:v].to(bias.dtype) if d_bias32 is not None and bias is not None else weight.new_empty(0)
    return loss, d_hidden, d_weight, d_bias


@_linear_cross_entropy_fwd.register_fake
def _(hidden, weight, targets, bias, ignore_index, reduction, need_hidden_grad, need_weight_grad):
    d_hidden = torch.empty_like(hidden) if need_hidden_grad else hidden.new_empty(0)
    d_weight = torch.empty_like(weight) if need_weight_grad else weight.new_empty(0)
    d_bias = torch.empty_like(bias) if need_weight_grad and bias is not None else weight.new_empty(0)
    return hidden.new_empty((), dtype=torch.float32), d_hidden, d_weight, d_bias


class LinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, bias, ignore_index: int, reduction: str):
        need_hidden_grad = ctx.needs_input_grad[0]
        need_weight_grad = ctx.needs_input_grad[1] or (bias is not None and ctx.needs_input_grad[3])
        loss, d_hidden, d_weight, d_bias = torch.ops.tinystories.linear_cross_entropy_fwd(
            hidden, weight, targets, bias, ignore_index, reduction, need_hidden_grad, need_weight_grad
        )
        ctx.save_for_backward(d_hidden, d_weight, d_bias)
        ctx.has_bias = bias is not None
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        d_hidden, d_weight, d_bias = ctx.saved_tensors
        # out-of-place: the saved gradients stay intact for retain_graph / repeated backward calls
        dh = d_hidden * grad_loss.to(d_hidden.dtype) if ctx.needs_input_grad[0] else None
        dw = d_weight * grad_loss.to(d_weight.dtype) if ctx.needs_input_grad[1] else None
        db = d_bias * grad_loss.to(d_bias.dtype) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return dh, dw, None, db, None, None


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """cross_entropy(hidden @ weight.T + bias, targets) without materializing the logits.

    hidden (..., C), weight (V, C) (nn.Linear / tied-embedding layout), targets (...) of class ids; rows whose target
    is ``ignore_index`` add nothing. ``reduction`` is "mean" (over the non-ignored rows) or "sum".
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"linear_cross_entropy: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    c = hidden.shape[-1]
    if weight.dim() != 2 or weight.shape[1] != c:
        raise ValueError(f"linear_cross_entropy: weight must be (V, {c}), got {tuple(weight.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"linear_cross_entropy: bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(
            f"linear_cross_entropy: targets {tuple(targets.shape)} must match hidden {tuple(hidden.shape[:-1])}"
        )
    if targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"linear_cross_entropy: targets must be int64 or int32, got {targets.dtype}")
    tensors = [t for t in (hidden, weight, targets, bias) if t is not None]
    if not use_kernels("linear_cross_entropy", *tensors):
        return reference.linear_cross_entropy(
            hidden, weight, targets, bias=bias, ignore_index=ignore_index, reduction=reduction
        )
    # mixed precision (fp32 parameters, half activations, or autocast) runs the matmuls in one dtype, like autocast
    dtype = compute_dtype(hidden)
    hidden, weight = hidden.to(dtype), weight.to(dtype)
    bias = bias.to(dtype) if bias is not None else None
    check_float("linear_cross_entropy", hidden, weight)
    return LinearCrossEntropyFunction.apply(
        hidden.reshape(-1, c).contiguous(),
        weight.contiguous(),
        targets.reshape(-1).contiguous(),
        bias,
        ignore_index,
        reduction,
    )


class LinearCrossEntropy(nn.Module):
    """Loss module over an LM head weight owned elsewhere (e.g. tied to the token embedding):
    ``LinearCrossEntropy()(hidden, lm_head.weight, targets)``."""

    def __init__(self, *, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"LinearCrossEntropy: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.ignore_index, self.reduction = ignore_index, reduction

    def forward(self, hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None) -> Tensor:
        return linear_cross_entropy(
            hidden, weight, targets, bias=bias, ignore_index=self.ignore_index, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, reduction={self.reduction!r}"


__all__ = ["LinearCrossEntropy", "LinearCrossEntropyFunction", "linear_cross_entropy"]
