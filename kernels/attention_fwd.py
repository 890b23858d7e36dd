"""The attention forward kernel (FlashAttention-2 style) and its custom op ``tinystories::attention_fwd``.

One program per (query block, batch*head) streams the key blocks the block can see with an online softmax in fp32
and stores the output plus the base-2 log-sum-exp of each row. Sliding window W (query i sees keys i-W+1..i): the
key loop starts at the first block inside the window, so the cost grows with T*W rather than T^2. The masking
helpers here are shared with the backward kernels (:mod:`.attention_bwd`), which recompute the same probabilities.
"""

import torch
from torch import Tensor

from ._triton import autotune_space, dot_precision, tl, triton

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


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def _window_arg(t: int, causal: bool, window: int | None) -> int:
    """The kernels' window: ``window`` when given, else T (so the window test never excludes a causal key)."""
    return t if window is None or not causal else min(window, t)


def _last_dim_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


@torch.library.custom_op("tinystories::attention_fwd", mutates_args=())
def attention_fwd(
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


@attention_fwd.register_fake
def _(q, k, v, causal, window, scale):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)
