"""FlashAttention-2 style causal and causal sliding-window attention (GPT-Neo global and local layers).

Forward: one program per (query block, batch*head) streams the key blocks the block can see with an online
softmax in fp32 and stores the output plus the base-2 log-sum-exp of each row. Sliding window W (query i sees keys
i-W+1..i): the key loop starts at the first block inside the window, so the cost grows with T*W rather than T^2.
Backward: two atomics-free (hence deterministic) kernels, one program per key block for dK/dV and one per query
block for dQ, recomputing the probabilities from the saved log-sum-exp. Head dims that are not powers of two (or
are below the tensor-core minimum of 16, e.g. 4) are padded inside the kernel with masked loads.
"""

import torch
from torch import Tensor, nn

from . import reference
from ._triton import autotune_space, check_float, compute_dtype, dot_precision, tl, triton, use_kernels

_LOG2E = 1.4426950408889634  # host side only
# Masked scores: finite, so a row whose first visited block is fully masked yields no NaN (its garbage is erased by
# the rescaling factor exp2(-1e30 - m) = 0 as soon as a visible key arrives; every valid row sees its diagonal).
_MASKED = tl.constexpr(-1.0e30)


def _configs(pairs):
    # 16x16 blocks under the interpreter: tiny test shapes still span several blocks
    return autotune_space(
        [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in pairs],
        triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1),
    )


_KEY = ["T", "HEAD_DIM", "window", "IS_CAUSAL"]
_FWD_CONFIGS = _configs([(128, 64, 4, 3), (64, 64, 4, 3), (128, 32, 4, 4), (64, 32, 2, 4)])
_DKDV_CONFIGS = _configs([(32, 128, 4, 3), (64, 64, 4, 3), (32, 64, 4, 4), (16, 64, 2, 4)])
_DQ_CONFIGS = _configs([(128, 32, 4, 3), (64, 64, 4, 3), (64, 32, 4, 4), (64, 16, 2, 4)])


@triton.jit
def _visible(q_idx, k_idx, T, window, IS_CAUSAL: tl.constexpr):
    """Mask of the (query, key) pairs that attend (in bounds, causal, inside the window), broadcast from the
    2-D index tiles ``q_idx`` and ``k_idx`` (either orientation)."""
    mask = (q_idx < T) & (k_idx < T)
    if IS_CAUSAL:
        mask = mask & (k_idx <= q_idx) & (k_idx > q_idx - window)
    return mask


@triton.jit
def _needs_mask(q_start, k_start, T, window, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr):
    """Whether the (query block, key block) tile holds any pair that must not attend (or lies past T); the
    others, most tiles of a long sequence, skip the mask arithmetic."""
    needs = (q_start + BLOCK_M > T) | (k_start + BLOCK_N > T)
    if IS_CAUSAL:
        # a key after some query (diagonal tile) or a key at or before some query - window (window edge)
        needs = needs | (k_start + BLOCK_N - 1 > q_start) | (k_start <= q_start + BLOCK_M - 1 - window)
    return needs


@triton.jit
def _key_range(q_start, T, window, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr):
    """[lo, hi) of the key positions that queries q_start..q_start+BLOCK_M-1 can see, lo aligned to BLOCK_N."""
    if IS_CAUSAL:
        lo = tl.maximum(q_start - window + 1, 0) // BLOCK_N * BLOCK_N
        hi = tl.minimum(q_start + BLOCK_M, T)
    else:
        lo = 0
        hi = T
    return lo, hi


@triton.autotune(configs=_FWD_CONFIGS, key=_KEY)
@triton.jit
def _attn_fwd_kernel(
    Q,
    K,
    V,
    O,
    LSE,
    sqb,
    sqh,
    sqt,
    skb,
    skh,
    skt,
    svb,
    svh,
    svt,
    sob,
    soh,
    sot,
    H,
    T,
    window,
    scale_log2,
    HEAD_DIM: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    Q += b * sqb + h * sqh
    K += b * skb + h * skh
    V += b * svb + h * svh
    O += b * sob + h * soh
    LSE += pid_bh.to(tl.int64) * T

    q_start = pid_m * BLOCK_M
    offs_m = q_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + offs_m[:, None] * sqt + offs_d[None, :], mask=(offs_m[:, None] < T) & d_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    lo, hi = _key_range(q_start, T, window, BLOCK_M, BLOCK_N, IS_CAUSAL)
    for start_n in range(lo, hi, BLOCK_N):
        offs_k = start_n + offs_n
        kv_mask = (offs_k[:, None] < T) & d_ok[None, :]
        k = tl.load(K + offs_k[:, None] * skt + offs_d[None, :], mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        qk = qk * scale_log2
        if _needs_mask(q_start, start_n, T, window, BLOCK_M, BLOCK_N, IS_CAUSAL):
            qk = tl.where(_visible(offs_m[:, None], offs_k[None, :], T, window, IS_CAUSAL), qk, _MASKED)
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + offs_k[:, None] * svt + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new

    row_ok = offs_m < T
    acc = acc / l_i[:, None]
    tl.store(
        O + offs_m[:, None] * sot + offs_d[None, :], acc.to(O.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :]
    )
    tl.store(LSE + offs_m, m_i + tl.log2(l_i), mask=row_ok)


@triton.jit
def _attn_bwd_delta_kernel(
    O,
    DO,
    DELTA,
    sob,
    soh,
    sot,
    sdb,
    sdh,
    sdt,
    H,
    T,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """delta_i = sum_d dO_id * O_id, the row term of the softmax backward."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < T) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(O + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sdt + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh.to(tl.int64) * T + offs_m, delta, mask=offs_m < T)


@triton.autotune(configs=_DKDV_CONFIGS, key=_KEY)
@triton.jit
def _attn_bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    sqb,
    sqh,
    sqt,
    skb,
    skh,
    skt,
    svb,
    svh,
    svt,
    sdb,
    sdh,
    sdt,
    s1b,
    s1h,
    s1t,
    s2b,
    s2h,
    s2t,
    H,
    T,
    window,
    scale,
    scale_log2,
    HEAD_DIM: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    Q += b * sqb + h * sqh
    K += b * skb + h * skh
    V += b * svb + h * svh
    DO += b * sdb + h * sdh
    DK += b * s1b + h * s1h
    DV += b * s2b + h * s2h
    LSE += pid_bh.to(tl.int64) * T
    DELTA += pid_bh.to(tl.int64) * T

    k_start = pid_n * BLOCK_N
    offs_k = k_start + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    kv_mask = (offs_k[:, None] < T) & d_ok[None, :]
    k = tl.load(K + offs_k[:, None] * skt + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + offs_k[:, None] * svt + offs_d[None, :], mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    if IS_CAUSAL:  # queries that see this key block: k_start .. k_start + BLOCK_N - 1 + window - 1
        lo = k_start // BLOCK_M * BLOCK_M
        hi = tl.minimum(k_start + BLOCK_N + window - 1, T)
    else:
        lo = 0
        hi = T
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q_mask = (offs_m[:, None] < T) & d_ok[None, :]
        q = tl.load(Q + offs_m[:, None] * sqt + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(DO + offs_m[:, None] * sdt + offs_d[None, :], mask=q_mask, other=0.0)
        lse = tl.load(LSE + offs_m, mask=offs_m < T, other=0.0)
        delta = tl.load(DELTA + offs_m, mask=offs_m < T, other=0.0)
        qk_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        p_t = tl.exp2(qk_t * scale_log2 - lse[None, :])
        if _needs_mask(start_m, k_start, T, window, BLOCK_M, BLOCK_N, IS_CAUSAL):
            p_t = tl.where(_visible(offs_m[None, :], offs_k[:, None], T, window, IS_CAUSAL), p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)

    tl.store(DK + offs_k[:, None] * s1t + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + offs_k[:, None] * s2t + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.autotune(configs=_DQ_CONFIGS, key=_KEY)
@triton.jit
def _attn_bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    sqb,
    sqh,
    sqt,
    skb,
    skh,
    skt,
    svb,
    svh,
    svt,
    sdb,
    sdh,
    sdt,
    s1b,
    s1h,
    s1t,
    H,
    T,
    window,
    scale,
    scale_log2,
    HEAD_DIM: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    Q += b * sqb + h * sqh
    DQ += b * s1b + h * s1h
    K += b * skb + h * skh
    V += b * svb + h * svh
    DO += b * sdb + h * sdh
    LSE += pid_bh.to(tl.int64) * T
    DELTA += pid_bh.to(tl.int64) * T

    q_start = pid_m * BLOCK_M
    offs_m = q_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q_mask = (offs_m[:, None] < T) & d_ok[None, :]
    q = tl.load(Q + offs_m[:, None] * sqt + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(DO + offs_m[:, None] * sdt + offs_d[None, :], mask=q_mask, other=0.0)
    lse = tl.load(LSE + offs_m, mask=offs_m < T, other=0.0)
    delta = tl.load(DELTA + offs_m, mask=offs_m < T, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    lo, hi = _key_range(q_start, T, window, BLOCK_M, BLOCK_N, IS_CAUSAL)
    for start_n in range(lo, hi, BLOCK_N):
        offs_k = start_n + offs_n
        kv_mask = (offs_k[:, None] < T) & d_ok[None, :]
        k = tl.load(K + offs_k[:, None] * skt + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + offs_k[:, None] * svt + offs_d[None, :], mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        p = tl.exp2(qk * scale_log2 - lse[:, None])
        if _needs_mask(q_start, start_n, T, window, BLOCK_M, BLOCK_N, IS_CAUSAL):
            p = tl.where(_visible(offs_m[:, None], offs_k[None, :], T, window, IS_CAUSAL), p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)

    tl.store(DQ + offs_m[:, None] * s1t + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=q_mask)


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def _window_arg(t: int, causal: bool, window: int | None) -> int:
    """The kernels' window: ``window`` when given, else T (so the window test never excludes a causal key)."""
    return t if window is None or not causal else min(window, t)


def _last_dim_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


@torch.library.custom_op("tinystories::attention_fwd", mutates_args=())
def _attention_fwd(
    q: Tensor, k: Tensor, v: Tensor, causal: bool, window: int | None, scale: float
) -> tuple[Tensor, Tensor]:
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    B, H, T, D = q.shape
    o = torch.empty_like(q)
    lse = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)  # noqa: E731
    _attn_fwd_kernel[grid](
        q,
        k,
        v,
        o,
        lse,
        *q.stride()[:3],
        *k.stride()[:3],
        *v.stride()[:3],
        *o.stride()[:3],
        H,
        T,
        _window_arg(T, causal, window),
        scale * _LOG2E,
        HEAD_DIM=D,
        IS_CAUSAL=causal,
        DOT_PRECISION=dot_precision(q.dtype),
        BLOCK_D=_block_d(D),
    )
    return o, lse


@_attention_fwd.register_fake
def _(q, k, v, causal, window, scale):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("tinystories::attention_bwd", mutates_args=())
def _attention_bwd(
    do: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    lse: Tensor,
    causal: bool,
    window: int | None,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    do, q, k, v, o = (_last_dim_contiguous(x) for x in (do, q, k, v, o))
    B, H, T, D = q.shape
    block_d = _block_d(D)
    delta = torch.empty_like(lse)
    _attn_bwd_delta_kernel[(triton.cdiv(T, 64), B * H)](
        o, do, delta, *o.stride()[:3], *do.stride()[:3], H, T, HEAD_DIM=D, BLOCK_M=64, BLOCK_D=block_d
    )
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3])
    args = (H, T, _window_arg(T, causal, window), scale, scale * _LOG2E)
    meta = dict(HEAD_DIM=D, IS_CAUSAL=causal, DOT_PRECISION=dot_precision(q.dtype), BLOCK_D=block_d)
    _attn_bwd_dkdv_kernel[lambda m: (triton.cdiv(T, m["BLOCK_N"]), B * H)](
        q, k, v, do, lse, delta, dk, dv, *strides, *dk.stride()[:3], *dv.stride()[:3], *args, **meta
    )
    _attn_bwd_dq_kernel[lambda m: (triton.cdiv(T, m["BLOCK_M"]), B * H)](
        q, k, v, do, lse, delta, dq, *strides, *dq.stride()[:3], *args, **meta
    )
    return dq, dk, dv


@_attention_bwd.register_fake
def _(do, q, k, v, o, lse, causal, window, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class AttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, causal: bool, window: int | None, scale: float) -> Tensor:
        o, lse = torch.ops.tinystories.attention_fwd(q, k, v, causal, window, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.window, ctx.scale = causal, window, scale
        return o

    @staticmethod
    def backward(ctx, do: Tensor):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = torch.ops.tinystories.attention_bwd(do, q, k, v, o, lse, ctx.causal, ctx.window, ctx.scale)
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
