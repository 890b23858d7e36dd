"""The attention backward kernels and their custom op ``tinystories::attention_bwd``.

delta = rowsum(dO * O), then two atomics-free (hence deterministic) kernels, one program per key block for dK/dV
and one per query block for dQ, recomputing the probabilities from the log-sum-exp the forward saved, with the
forward's masks (:mod:`.attention_fwd`).
"""

import torch
from torch import Tensor

from ._triton import dot_precision, tl, triton
from .attention_fwd import (
    _KEY,
    _LOG2E,
    _block_d,
    _configs,
    _key_range,
    _last_dim_contiguous,
    _needs_mask,
    _visible,
    _window_arg,
)

_DKDV_CONFIGS = _configs([(32, 128, 4, 3), (64, 64, 4, 3), (32, 64, 4, 4), (16, 64, 2, 4)])
_DQ_CONFIGS = _configs([(128, 32, 4, 3), (64, 64, 4, 3), (64, 32, 4, 4), (64, 16, 2, 4)])


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


@torch.library.custom_op("tinystories::attention_bwd", mutates_args=())
def attention_bwd(
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


@attention_bwd.register_fake
def _(do, q, k, v, o, lse, causal, window, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
