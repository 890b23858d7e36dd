"""LayerNorm with an optional fused residual add: y = LN(x + residual), also returning the sum for the next block.

Forward: each program normalizes a tile of rows in one pass over memory (sum written when a residual is given),
keeping mean and 1/std in fp32 for the backward. Backward: a fixed number of programs each walks a contiguous
range of rows, writes dX (plus the gradient arriving at the returned sum, when there is one) and accumulates its
partial dW/dB in registers; the partials are summed in a fixed order afterwards, so results are deterministic.
"""

import torch
from torch import Tensor, nn

from . import reference
from ._triton import interpreter_active, tl, triton, use_kernels


@triton.jit
def _ln_fwd_kernel(
    X,
    RES,
    W,
    B,
    Y,
    SUM,
    MEAN,
    RSTD,
    N,
    C,
    eps,
    HAS_RES: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < C
    mask = (rows[:, None] < N) & col_ok[None, :]
    offs = rows[:, None].to(tl.int64) * C + cols[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        x += tl.load(RES + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(SUM + offs, x.to(SUM.dtype.element_ty), mask=mask)
        # normalize the rounded sum, exactly what the unfused `LN(x + residual)` sees
        x = x.to(SUM.dtype.element_ty).to(tl.float32)
    mean = tl.sum(x, 1) / C
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / C + eps)
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :]
    if HAS_BIAS:
        y += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + rows, mean, mask=rows < N)
    tl.store(RSTD + rows, rstd, mask=rows < N)


@triton.jit
def _ln_bwd_kernel(
    DY,
    DSUM,
    X,
    W,
    MEAN,
    RSTD,
    DX,
    DW_PARTIAL,
    DB_PARTIAL,
    N,
    C,
    rows_per_program,
    HAS_DSUM: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < C
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_C], dtype=tl.float32)
    db = tl.zeros([BLOCK_C], dtype=tl.float32)
    first = pid * rows_per_program
    last = tl.minimum(first + rows_per_program, N)
    for start in range(first, last, BLOCK_ROWS):
        rows = start + tl.arange(0, BLOCK_ROWS)
        row_ok = rows < last
        mask = row_ok[:, None] & col_ok[None, :]
        offs = rows[:, None].to(tl.int64) * C + cols[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + rows, mask=row_ok, other=0.0)
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        wdy = dy * w[None, :]
        c1 = tl.sum(xhat * wdy, 1) / C
        c2 = tl.sum(wdy, 1) / C
        dx = (wdy - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
        if HAS_DSUM:
            dx += tl.load(DSUM + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * xhat, 0)
        if HAS_BIAS:
            db += tl.sum(dy, 0)
    tl.store(DW_PARTIAL + pid * C + cols, dw, mask=col_ok)
    if HAS_BIAS:
        tl.store(DB_PARTIAL + pid * C + cols, db, mask=col_ok)


def _launch_shape(c: int) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_ROWS, num_warps): a few thousand elements per program keeps loads wide and registers free."""
    block_c = triton.next_power_of_2(c)
    if interpreter_active():
        return block_c, 4, 1
    block_rows = max(1, min(16, 4096 // block_c))
    return block_c, block_rows, 8 if block_c * block_rows >= 4096 else 4


def _bwd_programs(n: int, device: torch.device) -> int:
    if interpreter_active():
        return min(n, 3)
    return min(n, 4 * torch.cuda.get_device_properties(device).multi_processor_count)


@torch.library.custom_op("tinystories::layer_norm_fwd", mutates_args=())
def _layer_norm_fwd(
    x: Tensor, weight: Tensor, bias: Tensor | None, residual: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns (y, x + residual (empty without a residual), mean, rstd) for 2-D contiguous x; with a residual of
    another dtype (autocast: half branch output, fp32 residual stream) both outputs take the promoted dtype."""
    n, c = x.shape
    dtype = _out_dtype(x, residual)
    y = torch.empty_like(x, dtype=dtype)
    summed = torch.empty_like(x, dtype=dtype) if residual is not None else x.new_empty(0)
    mean = torch.empty(n, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    block_c, block_rows, warps = _launch_shape(c)
    _ln_fwd_kernel[(triton.cdiv(n, block_rows),)](
        x,
        residual if residual is not None else x,
        weight,
        bias if bias is not None else weight,
        y,
        summed,
        mean,
        rstd,
        n,
        c,
        eps,
        HAS_RES=residual is not None,
        HAS_BIAS=bias is not None,
        BLOCK_ROWS=block_rows,
        BLOCK_C=block_c,
        num_warps=warps,
    )
    return y, summed, mean, rstd


def _out_dtype(x: Tensor, residual: Tensor | None) -> torch.dtype:
    return torch.promote_types(x.dtype, residual.dtype) if residual is not None else x.dtype


@_layer_norm_fwd.register_fake
def _(x, weight, bias, residual, eps):
    dtype = _out_dtype(x, residual)
    mean = x.new_empty(x.shape[0], dtype=torch.float32)
    summed = torch.empty_like(x, dtype=dtype) if residual is not None else x.new_empty(0)
    return torch.empty_like(x, dtype=dtype), summed, mean, mean.clone()


@torch.library.custom_op("tinystories::layer_norm_bwd", mutates_args=())
def _layer_norm_bwd(
    dy: Tensor, dsum: Tensor | None, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor, has_bias: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (dx, dweight, dbias (empty without a bias)); ``x`` is the normalized input (the sum, if fused)."""
    n, c = x.shape
    dx = torch.empty_like(x)
    programs = _bwd_programs(n, x.device)
    dw_partial = torch.empty((programs, c), device=x.device, dtype=torch.float32)
    db_partial = torch.empty_like(dw_partial) if has_bias else dw_partial
    block_c, block_rows, warps = _launch_shape(c)
    _ln_bwd_kernel[(programs,)](
        dy,
        dsum if dsum is not None else dy,
        x,
        weight,
        mean,
        rstd,
        dx,
        dw_partial,
        db_partial,
        n,
        c,
        triton.cdiv(n, programs),
        HAS_DSUM=dsum is not None,
        HAS_BIAS=has_bias,
        BLOCK_ROWS=block_rows,
        BLOCK_C=block_c,
        num_warps=warps,
    )
    dw = dw_partial.sum(0).to(weight.dtype)
    db = db_partial.sum(0).to(weight.dtype) if has_bias else weight.new_empty(0)
    return dx, dw, db


@_layer_norm_bwd.register_fake
def _(dy, dsum, x, weight, mean, rstd, has_bias):
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight) if has_bias else weight.new_empty(0)


class LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, residual: Tensor | None, eps: float):
        y, summed, mean, rstd = torch.ops.tinystories.layer_norm_fwd(x, weight, bias, residual, eps)
        has_res = residual is not None
        ctx.save_for_backward(summed if has_res else x, weight, mean, rstd)
        ctx.has_res, ctx.has_bias = has_res, bias is not None
        ctx.x_dtype, ctx.res_dtype = x.dtype, residual.dtype if residual is not None else None
        ctx.set_materialize_grads(False)  # an unused sum output then costs no zero-filled gradient
        if has_res:
            return y, summed
        return y

    @staticmethod
    def backward(ctx, dy: Tensor, dsum: Tensor | None = None):
        x, weight, mean, rstd = ctx.saved_tensors
        dy = dy.contiguous() if dy is not None else torch.zeros_like(x)
        dsum = dsum.contiguous() if dsum is not None else None
        dx, dw, db = torch.ops.tinystories.layer_norm_bwd(dy, dsum, x, weight, mean, rstd, ctx.has_bias)
        d_residual = dx.to(ctx.res_dtype) if ctx.has_res else None
        return dx.to(ctx.x_dtype), dw, db if ctx.has_bias else None, d_residual, None


def layer_norm(
    x: Tensor, weight: Tensor, bias: Tensor | None, eps: float = 1e-5, residual: Tensor | None = None
) -> "Tensor | tuple[Tensor, Tensor]":
    """LayerNorm over the last dim; with ``residual`` returns (layer_norm(x + residual), x + residual) in one pass."""
    c = x.shape[-1]
    if weight.shape != (c,) or (bias is not None and bias.shape != (c,)):
        raise ValueError(f"layer_norm: weight/bias must have shape ({c},), got {tuple(weight.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"layer_norm: residual shape {tuple(residual.shape)} must match x {tuple(x.shape)}")
    for t in (x, weight, bias, residual):
        if t is not None and t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise TypeError(f"layer_norm: expected float16, bfloat16 or float32 tensors, got {t.dtype}")
    tensors = [t for t in (x, weight, bias, residual) if t is not None]
    if not use_kernels("layer_norm", *tensors):
        return reference.layer_norm(x, weight, bias, eps, residual)
    shape = x.shape
    x2 = x.reshape(-1, c).contiguous()
    res2 = residual.reshape(-1, c).contiguous() if residual is not None else None
    out = LayerNormFunction.apply(
        x2, weight.contiguous(), bias.contiguous() if bias is not None else None, res2, float(eps)
    )
    if residual is None:
        return out.view(shape)
    return out[0].view(shape), out[1].view(shape)


class FusedLayerNorm(nn.Module):
    """nn.LayerNorm twin (same parameter names, so state dicts load) whose forward takes an optional residual."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.normalized_shape = (normalized_shape,)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(normalized_shape, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(normalized_shape, device=device, dtype=dtype)) if bias else None

    def forward(self, x: Tensor, residual: Tensor | None = None):
        return layer_norm(x, self.weight, self.bias, self.eps, residual)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape[0]}, eps={self.eps}, bias={self.bias is not None}"


__all__ = ["FusedLayerNorm", "LayerNormFunction", "layer_norm"]
