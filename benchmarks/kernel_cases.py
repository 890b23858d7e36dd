"""The kernel benchmark cases shared by ``bench_kernels.py`` (pytest-benchmark) and ``gpu_report.py`` (one GPU run).

A case is one kernel at one shape with every implementation that computes the same function: ours, the plain
PyTorch reference, and the strongest peers available here (SDPA / FlashAttention-2, FlexAttention, torch.compile of
the reference, Liger-Kernel when installed). ``size="gpu"`` gives a 33M model's shapes, ``size="cpu"`` tiny ones that
only check the code paths run (Triton's interpreter is far too slow for real sizes).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import tinystories.kernels as ours
from tinystories.kernels import reference


class PeerUnavailable(Exception):
    """A peer that cannot run here (not installed, refuses the shape); the reason is reported, not hidden."""


@dataclass
class Case:
    kernel: str
    name: str
    make_inputs: Callable[[], list[torch.Tensor]]  # leaves requiring grad first, then non-differentiable extras
    impls: dict[str, Callable[..., torch.Tensor]]
    compiled: set[str] = field(default_factory=set)  # impls that pay a torch.compile on first call
    baseline: str = "plain"  # the implementation our numbers are checked against

    def differentiable(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t for t in inputs if t.requires_grad]


def _randn(*shape, dtype, device, scale=1.0, grad=True, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    return (torch.randn(*shape, generator=gen, device=device) * scale).to(dtype).requires_grad_(grad)


@functools.cache
def _compiled(fn):
    return torch.compile(fn)


def _liger(module_path: str, name: str):
    try:
        module = __import__(module_path, fromlist=[name])
        return getattr(module, name)
    except ImportError as exc:
        raise PeerUnavailable(f"Liger-Kernel not installed ({exc})") from None


# --- attention -----------------------------------------------------------------------------------------


def _flex(window: int | None, t: int, device: str):
    """Compiled FlexAttention with a causal (sliding-window) block mask, built on first use."""
    built = {}

    def mask_mod(b, h, q_idx, kv_idx):
        visible = kv_idx <= q_idx
        return visible & (q_idx - kv_idx < window) if window is not None else visible

    def run(q, k, v):
        if not built:
            try:
                from torch.nn.attention.flex_attention import create_block_mask, flex_attention
            except ImportError as exc:
                raise PeerUnavailable(f"FlexAttention not in this torch ({exc})") from None
            built["mask"] = create_block_mask(mask_mod, None, None, t, t, device=device)
            built["fn"] = _compiled(flex_attention)
        return built["fn"](q, k, v, block_mask=built["mask"], scale=1.0)

    return run


def _sdpa_window(window: int, t: int, device: str):
    mask = reference.attention_mask(t, window=window, device=device)
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)


def attention_cases(size: str, device: str, dtype: torch.dtype) -> list[Case]:
    if size == "gpu":
        shapes = [(64, 16, 512, 48, None), (64, 16, 512, 48, 256), (64, 16, 512, 4, None), (64, 16, 512, 4, 256)]
    else:
        shapes = [(1, 2, 40, 16, None), (1, 2, 40, 16, 8)]
    cases = []
    for b, h, t, d, window in shapes:
        impls: dict[str, Callable] = {
            "ours": lambda q, k, v, w=window: ours.attention(q, k, v, window=w),
            "plain": lambda q, k, v, w=window: reference.attention(q, k, v, window=w),
        }
        compiled = set()
        if window is None:
            impls["sdpa"] = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)
        else:
            impls["sdpa-mask"] = _sdpa_window(window, t, device)
        if device == "cuda":
            impls["flex"] = _flex(window, t, device)
            impls["compiled-ref"] = _compiled(functools.partial(reference.attention, window=window))
            compiled = {"flex", "compiled-ref"}
        kind = "causal" if window is None else f"window{window}"

        def make(b=b, h=h, t=t, d=d):
            return [_randn(b, h, t, d, dtype=dtype, device=device, seed=i) for i in range(3)]

        cases.append(Case("attention", f"{kind} B{b} H{h} T{t} D{d}", make, impls, compiled))
    return cases


# --- layer norm ----------------------------------------------------------------------------------------


def _liger_layer_norm(x, w, b):
    fn = _liger("liger_kernel.ops.layer_norm", "LigerLayerNormFunction")
    return fn.apply(x, w, b, 1e-5)


def layer_norm_cases(size: str, device: str, dtype: torch.dtype) -> list[Case]:
    n, c = (32768, 768) if size == "gpu" else (50, 48)

    def make(residual: bool):
        def inputs():
            xs = [_randn(n, c, dtype=dtype, device=device, seed=0)]
            xs += [(_randn(c, dtype=dtype, device=device, seed=1, scale=0.1, grad=False) + 1.0).requires_grad_()]
            xs += [_randn(c, dtype=dtype, device=device, seed=2, scale=0.1)]
            if residual:
                xs.append(_randn(n, c, dtype=dtype, device=device, seed=3))
            return xs

        return inputs

    plain = {
        "ours": lambda x, w, b: ours.layer_norm(x, w, b),
        "plain": lambda x, w, b: F.layer_norm(x, (c,), w, b),
        "liger": _liger_layer_norm,
    }
    residual = {
        # both outputs feed on, as in a transformer block: normed -> MLP, sum -> next residual add
        "ours": lambda x, w, b, r: torch.cat(ours.layer_norm(x, w, b, residual=r), dim=-1),
        "plain": lambda x, w, b, r: torch.cat(_unfused_residual_ln(x, w, b, r), dim=-1),
    }
    compiled = set()
    if device == "cuda":
        plain["compiled-ref"] = _compiled(lambda x, w, b: F.layer_norm(x, (c,), w, b))
        residual["compiled-ref"] = _compiled(lambda x, w, b, r: torch.cat(_unfused_residual_ln(x, w, b, r), dim=-1))
        compiled = {"compiled-ref"}
    return [
        Case("layer_norm", f"N{n} C{c}", make(False), plain, compiled),
        Case("layer_norm", f"+residual N{n} C{c}", make(True), residual, compiled),
    ]


def _unfused_residual_ln(x, w, b, r):
    s = x + r
    return F.layer_norm(s, s.shape[-1:], w, b), s


# --- MLP -----------------------------------------------------------------------------------------------


def mlp_cases(size: str, device: str, dtype: torch.dtype) -> list[Case]:
    n, c = (32768, 768) if size == "gpu" else (40, 24)

    def make():
        return [
            _randn(n, c, dtype=dtype, device=device, seed=0),
            _randn(4 * c, c, dtype=dtype, device=device, seed=1, scale=c**-0.5),
            _randn(4 * c, dtype=dtype, device=device, seed=2, scale=0.1),
            _randn(c, 4 * c, dtype=dtype, device=device, seed=3, scale=(4 * c) ** -0.5),
            _randn(c, dtype=dtype, device=device, seed=4, scale=0.1),
        ]

    impls = {"ours": ours.fused_mlp, "plain": reference.fused_mlp}
    compiled = set()
    if device == "cuda":
        impls["compiled-ref"] = _compiled(reference.fused_mlp)
        compiled = {"compiled-ref"}
    return [Case("mlp", f"N{n} C{c} I{4 * c}", make, impls, compiled)]


# --- linear + cross-entropy ----------------------------------------------------------------------------


def _liger_linear_cross_entropy(h, w, targets):
    loss_cls = _liger("liger_kernel.transformers.fused_linear_cross_entropy", "LigerFusedLinearCrossEntropyLoss")
    return loss_cls()(w, h, targets)


def linear_cross_entropy_cases(size: str, device: str, dtype: torch.dtype) -> list[Case]:
    shapes = [(32768, 768, 50257), (32768, 768, 10000)] if size == "gpu" else [(40, 24, 131)]
    cases = []
    for n, c, v in shapes:

        def make(n=n, c=c, v=v):
            gen = torch.Generator(device=device).manual_seed(5)
            targets = torch.randint(0, v, (n,), generator=gen, device=device)
            targets[: n // 50] = -100  # some padding
            return [
                _randn(n, c, dtype=dtype, device=device, seed=0),
                _randn(v, c, dtype=dtype, device=device, seed=1, scale=0.02),
                targets,
            ]

        impls = {
            "ours": lambda h, w, t: ours.linear_cross_entropy(h, w, t),
            "plain": lambda h, w, t: reference.linear_cross_entropy(h, w, t),
            "liger": _liger_linear_cross_entropy,
        }
        compiled = set()
        if device == "cuda":
            impls["compiled-ref"] = _compiled(reference.linear_cross_entropy)
            compiled = {"compiled-ref"}
        cases.append(Case("linear_cross_entropy", f"N{n} C{c} V{v}", make, impls, compiled))
    return cases


def all_cases(size: str, device: str, dtype: torch.dtype) -> list[Case]:
    return [
        *attention_cases(size, device, dtype),
        *layer_norm_cases(size, device, dtype),
        *mlp_cases(size, device, dtype),
        *linear_cross_entropy_cases(size, device, dtype),
    ]
