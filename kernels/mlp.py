"""GPT-Neo MLP: proj(gelu_new(fc(x))) with the bias and activation fused into the fc matmul's epilogue.

Forward: one Triton matmul writes the pre-activation fc(x) (kept for the backward) and gelu_new of it (consumed by
the proj matmul, then freed). Backward: one Triton matmul computes dAct = dY @ W_proj and, in its epilogue, both
dPre = dAct * gelu_new'(pre) and a recomputed gelu_new(pre) for dW_proj, so the activation is never stored across
forward and backward: a tanh per element is far cheaper than keeping a (tokens x 4C) tensor alive. The remaining
plain matmuls (proj, dX, dW) go to cuBLAS, which has no epilogue to fuse there.
"""

import torch
from torch import Tensor, nn

from . import reference
from ._triton import autotune_space, check_float, compute_dtype, dot_precision, tl, triton, use_kernels

_EPILOGUE_BIAS_GELU = 0  # out: PRE = acc + bias, ACT = gelu(PRE)
_EPILOGUE_GELU_BACKWARD = 1  # in: PRE; out: D_PRE = acc * gelu'(PRE), ACT = gelu(PRE)


def _configs():
    return autotune_space(
        [
            triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
            for m, n, k, w, s in [(128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4)]
        ],
        triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16}, num_warps=1, num_stages=1),
    )


@triton.jit
def _gelu_new_and_grad(x):
    """gelu_new(x) = 0.5 x (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3), and its derivative."""
    u2 = 1.5957691216057308 * (x + 0.044715 * x * x * x)  # 2u
    s = tl.sigmoid(u2)
    grad = s + x * s * (1.0 - s) * 1.5957691216057308 * (1.0 + 0.134145 * x * x)
    return x * s, grad


@triton.autotune(configs=_configs(), key=["M", "N", "K", "EPILOGUE"])
@triton.jit
def _matmul_gelu_kernel(
    A,
    B,
    BIAS,
    PRE,
    OUT,
    ACT,
    M,
    N,
    K,
    sam,
    sak,
    sbk,
    sbn,
    EPILOGUE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    STORE_PRE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr = 8,
):
    """acc = A (M, K) @ B (K, N) in fp32, then the epilogue; PRE/OUT/ACT are contiguous (M, N)."""
    # grouped launch order: consecutive programs share A row-blocks, for L2 reuse
    pid = tl.program_id(0)
    num_m, num_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * num_n)
    first_m = group * GROUP_M
    group_size = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % group_size
    pid_n = (pid % (GROUP_M * num_n)) // group_size

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = A + offs_m[:, None].to(tl.int64) * sam + offs_k[None, :] * sak
    b_ptrs = B + offs_k[:, None] * sbk + offs_n[None, :].to(tl.int64) * sbn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        a = tl.load(a_ptrs, mask=(offs_m[:, None] < M) & (offs_k[None, :] + k < K), other=0.0)
        b = tl.load(b_ptrs, mask=(offs_k[:, None] + k < K) & (offs_n[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K * sak
        b_ptrs += BLOCK_K * sbk

    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    offs = offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    dtype = ACT.dtype.element_ty
    if EPILOGUE == 0:
        if HAS_BIAS:
            acc += tl.load(BIAS + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        pre = acc.to(dtype)
        if STORE_PRE:
            tl.store(PRE + offs, pre, mask=mask)
        # the activation of the rounded pre-activation: exactly what the backward recomputes
        act, _ = _gelu_new_and_grad(pre.to(tl.float32))
        tl.store(ACT + offs, act.to(dtype), mask=mask)
    else:
        pre = tl.load(PRE + offs, mask=mask, other=0.0).to(tl.float32)
        act, grad = _gelu_new_and_grad(pre)
        tl.store(OUT + offs, (acc * grad).to(dtype), mask=mask)
        tl.store(ACT + offs, act.to(dtype), mask=mask)


def _launch(a: Tensor, b: Tensor, epilogue: int, *, bias=None, pre=None, out=None, act=None, store_pre=True):
    m, k = a.shape
    n = b.shape[1]
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    _matmul_gelu_kernel[grid](
        a,
        b,
        bias if bias is not None else a,
        pre if pre is not None else act,
        out if out is not None else act,
        act,
        m,
        n,
        k,
        *a.stride(),
        *b.stride(),
        EPILOGUE=epilogue,
        HAS_BIAS=bias is not None,
        STORE_PRE=store_pre,
        DOT_PRECISION=dot_precision(a.dtype),
    )


@torch.library.custom_op("tinystories::mlp_fc_gelu", mutates_args=())
def _mlp_fc_gelu(x: Tensor, fc_weight: Tensor, fc_bias: Tensor | None, store_pre: bool) -> tuple[Tensor, Tensor]:
    """(pre = x @ fc_weight.T + fc_bias (empty unless store_pre), gelu_new(pre)) for 2-D x."""
    m, i = x.shape[0], fc_weight.shape[0]
    act = x.new_empty((m, i))
    pre = x.new_empty((m, i)) if store_pre else x.new_empty(0)
    _launch(x, fc_weight.t(), _EPILOGUE_BIAS_GELU, bias=fc_bias, pre=pre, act=act, store_pre=store_pre)
    return pre, act


@_mlp_fc_gelu.register_fake
def _(x, fc_weight, fc_bias, store_pre):
    act = x.new_empty((x.shape[0], fc_weight.shape[0]))
    return (torch.empty_like(act) if store_pre else x.new_empty(0)), act


@torch.library.custom_op("tinystories::mlp_gelu_backward", mutates_args=())
def _mlp_gelu_backward(dy: Tensor, proj_weight: Tensor, pre: Tensor) -> tuple[Tensor, Tensor]:
    """(dPre = (dy @ proj_weight) * gelu_new'(pre), gelu_new(pre)) for 2-D dy."""
    d_pre, act = torch.empty_like(pre), torch.empty_like(pre)
    _launch(dy, proj_weight, _EPILOGUE_GELU_BACKWARD, pre=pre, out=d_pre, act=act)
    return d_pre, act


@_mlp_gelu_backward.register_fake
def _(dy, proj_weight, pre):
    return torch.empty_like(pre), torch.empty_like(pre)


class MLPFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fc_weight, fc_bias, proj_weight, proj_bias):
        store_pre = any(ctx.needs_input_grad)
        pre, act = torch.ops.tinystories.mlp_fc_gelu(x, fc_weight, fc_bias, store_pre)
        out = torch.addmm(proj_bias, act, proj_weight.t()) if proj_bias is not None else act @ proj_weight.t()
        ctx.save_for_backward(x, fc_weight, proj_weight, pre)
        ctx.has_fc_bias, ctx.has_proj_bias = fc_bias is not None, proj_bias is not None
        return out

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, fc_weight, proj_weight, pre = ctx.saved_tensors
        dy = dy.contiguous()
        d_pre, act = torch.ops.tinystories.mlp_gelu_backward(dy, proj_weight, pre)
        needs = ctx.needs_input_grad
        dx = d_pre @ fc_weight if needs[0] else None
        d_fc_w = d_pre.t() @ x if needs[1] else None
        d_fc_b = d_pre.sum(0) if ctx.has_fc_bias and needs[2] else None
        d_proj_w = dy.t() @ act if needs[3] else None
        d_proj_b = dy.sum(0) if ctx.has_proj_bias and needs[4] else None
        return dx, d_fc_w, d_fc_b, d_proj_w, d_proj_b


def fused_mlp(
    x: Tensor, fc_weight: Tensor, fc_bias: Tensor | None, proj_weight: Tensor, proj_bias: Tensor | None
) -> Tensor:
    """proj(gelu_new(fc(x))) for x (..., C), fc_weight (I, C), proj_weight (C, I) (nn.Linear layouts)."""
    c = x.shape[-1]
    inter = fc_weight.shape[0]
    if fc_weight.shape != (inter, c) or proj_weight.shape != (c, inter):
        raise ValueError(
            f"fused_mlp: expected fc_weight (I, {c}) and proj_weight ({c}, I), "
            f"got {tuple(fc_weight.shape)} and {tuple(proj_weight.shape)}"
        )
    if (fc_bias is not None and fc_bias.shape != (inter,)) or (proj_bias is not None and proj_bias.shape != (c,)):
        raise ValueError(f"fused_mlp: fc_bias must be ({inter},) and proj_bias ({c},)")
    tensors = [t for t in (x, fc_weight, fc_bias, proj_weight, proj_bias) if t is not None]
    if not use_kernels("fused_mlp", *tensors):
        return reference.fused_mlp(x, fc_weight, fc_bias, proj_weight, proj_bias)
    # mixed precision (fp32 parameters, half activations, or autocast) computes in one half dtype, like autocast
    dtype = compute_dtype(x)
    x, fc_weight, proj_weight = x.to(dtype), fc_weight.to(dtype), proj_weight.to(dtype)
    fc_bias = fc_bias.to(dtype) if fc_bias is not None else None
    proj_bias = proj_bias.to(dtype) if proj_bias is not None else None
    check_float("fused_mlp", x, fc_weight, proj_weight)
    out = MLPFunction.apply(x.reshape(-1, c).contiguous(), fc_weight, fc_bias, proj_weight, proj_bias)
    return out.view(*x.shape[:-1], c)


class FusedMLP(nn.Module):
    """GPT-Neo's MLP (``c_fc`` -> gelu_new -> ``c_proj``, same parameter names as Hugging Face's GPTNeoMLP)."""

    def __init__(
        self, hidden_size: int, intermediate_size: int | None = None, bias: bool = True, device=None, dtype=None
    ):
        super().__init__()
        intermediate_size = intermediate_size or 4 * hidden_size
        self.c_fc = nn.Linear(hidden_size, intermediate_size, bias=bias, device=device, dtype=dtype)
        self.c_proj = nn.Linear(intermediate_size, hidden_size, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return fused_mlp(x, self.c_fc.weight, self.c_fc.bias, self.c_proj.weight, self.c_proj.bias)


__all__ = ["FusedMLP", "MLPFunction", "fused_mlp"]
