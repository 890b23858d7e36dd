"""Compile every Triton kernel of tinystories.kernels for an H100 (sm_90) without a GPU.

Triton's CPU interpreter runs the kernels' logic but not the GPU compiler, so errors that only the real backend
raises (tensor-core shape limits, layout/type problems, shared memory overflow) would first show on a lent GPU.
This compiles through ptxas to a cubin, the same pipeline a launch on an H100 uses.

    python tests/sm90_compile.py           # every autotune config (a few minutes)
    python tests/sm90_compile.py --quick   # the first config of each kernel (what tests/ runs)
Must run without TRITON_INTERPRET (the interpreter replaces @triton.jit functions).
"""

from __future__ import annotations

import importlib
import sys
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

H100 = GPUTarget("cuda", 90, 32)


def _compile(kernel, types: dict, constexprs: dict, num_warps: int, num_stages: int, label: str) -> str | None:
    fn = kernel.fn if hasattr(kernel, "configs") else kernel  # an autotuner wraps the JITFunction
    signature = {name: "constexpr" if name in constexprs else types[name] for name in fn.arg_names}
    start = time.perf_counter()
    try:
        triton.compile(
            ASTSource(fn, signature, constexprs),
            target=H100,
            options={"num_warps": num_warps, "num_stages": num_stages},
        )
    except Exception as exc:  # report every failure, not just the first
        print(f"FAIL {label}: {type(exc).__name__}: {str(exc)[:1500]}", flush=True)
        return label
    print(f"ok   {label} ({time.perf_counter() - start:.1f} s)", flush=True)
    return None


def _i32(*names: str) -> dict:
    return {n: "i32" for n in names}


def compile_all(quick: bool) -> list[str]:
    attention_fwd = importlib.import_module("tinystories.kernels.attention_fwd")
    attention_bwd = importlib.import_module("tinystories.kernels.attention_bwd")
    layer_norm = importlib.import_module("tinystories.kernels.layer_norm")
    cross_entropy = importlib.import_module("tinystories.kernels.linear_cross_entropy")
    mlp = importlib.import_module("tinystories.kernels.mlp")
    failures = []

    def configs(space):
        return space[:1] if quick else space

    for dtype in ("bf16", "fp32") if quick else ("bf16", "fp16", "fp32"):
        precision = "ieee" if dtype == "fp32" else "tf32"
        if not quick:
            shapes = [(4, True), (48, True), (20, False), (128, True)]
        else:  # fp32 only checks the exact-dot path
            shapes = [(4, True), (48, True), (128, False)] if dtype != "fp32" else [(48, True)]
        for head_dim, causal in shapes:
            block_d = max(16, triton.next_power_of_2(head_dim))
            strides = "sqb sqh sqt skb skh skt svb svh svt sob soh sot sdb sdh sdt s1b s1h s1t s2b s2h s2t".split()
            types = {**_i32(*strides, "H", "T", "window"), "scale_log2": "fp32", "scale": "fp32"}
            types |= {n: f"*{dtype}" for n in "Q K V O DO DK DV DQ".split()} | {"LSE": "*fp32", "DELTA": "*fp32"}
            for space, kernel in [
                (attention_fwd._FWD_CONFIGS, attention_fwd._attn_fwd_kernel),
                (attention_bwd._DKDV_CONFIGS, attention_bwd._attn_bwd_dkdv_kernel),
                (attention_bwd._DQ_CONFIGS, attention_bwd._attn_bwd_dq_kernel),
            ]:
                for cfg in configs(space if dtype != "fp32" else space[:1]):
                    constexprs = {
                        "HEAD_DIM": head_dim,
                        "IS_CAUSAL": causal,
                        "DOT_PRECISION": precision,
                        "BLOCK_D": block_d,
                        **cfg.kwargs,
                    }
                    label = (
                        f"{kernel.fn.__name__} {dtype} D{head_dim} causal={causal} {cfg.kwargs} "
                        f"w{cfg.num_warps} s{cfg.num_stages}"
                    )
                    failures.append(_compile(kernel, types, constexprs, cfg.num_warps, cfg.num_stages, label))
            failures.append(
                _compile(
                    attention_bwd._attn_bwd_delta_kernel,
                    types,
                    {"HEAD_DIM": head_dim, "BLOCK_M": 64, "BLOCK_D": block_d},
                    4,
                    3,
                    f"_attn_bwd_delta_kernel {dtype} D{head_dim}",
                )
            )
        for c in ((64, 768) if dtype != "fp32" else ()) if quick else (64, 72, 768, 1024):
            block_c, block_rows, warps = layer_norm._launch_shape(c)
            types = {n: f"*{dtype}" for n in "X RES Y SUM DY DSUM DX".split()} | {
                n: "*fp32" for n in "W B MEAN RSTD DW_PARTIAL DB_PARTIAL".split()
            }
            types |= _i32("N", "C", "rows_per_program") | {"eps": "fp32"}
            for flag in (False, True):
                shape = {"BLOCK_ROWS": block_rows, "BLOCK_C": block_c}
                failures.append(
                    _compile(
                        layer_norm._ln_fwd_kernel,
                        types,
                        {"HAS_RES": flag, "HAS_BIAS": True, **shape},
                        warps,
                        3,
                        f"_ln_fwd_kernel {dtype} C{c} residual={flag}",
                    )
                )
                failures.append(
                    _compile(
                        layer_norm._ln_bwd_kernel,
                        types,
                        {"HAS_DSUM": flag, "HAS_BIAS": flag, **shape},
                        warps,
                        3,
                        f"_ln_bwd_kernel {dtype} C{c} dsum={flag}",
                    )
                )
        types = {"LOGITS": f"*{dtype}", "TARGETS": "*i64", "LOSS": "*fp32", "GRAD_SCALE": "*fp32"} | _i32(
            "stride_row", "V", "ignore_index"
        )
        for write_grad in (True, False):
            failures.append(
                _compile(
                    cross_entropy._cross_entropy_rows_kernel,
                    types,
                    {"WRITE_GRAD": write_grad, "BLOCK_V": 4096},
                    8,
                    3,
                    f"_cross_entropy_rows_kernel {dtype} write_grad={write_grad}",
                )
            )
        types = {n: f"*{dtype}" for n in "A B BIAS PRE OUT ACT".split()} | _i32(
            "M", "N", "K", "sam", "sak", "sbk", "sbn"
        )
        space = mlp._configs()
        for cfg in configs(space if dtype != "fp32" else space[:1]):
            for epilogue in (0, 1):
                constexprs = {
                    "EPILOGUE": epilogue,
                    "HAS_BIAS": True,
                    "STORE_PRE": True,
                    "DOT_PRECISION": precision,
                    "GROUP_M": 8,
                    **cfg.kwargs,
                }
                failures.append(
                    _compile(
                        mlp._matmul_gelu_kernel,
                        types,
                        constexprs,
                        cfg.num_warps,
                        cfg.num_stages,
                        f"_matmul_gelu_kernel {dtype} epilogue={epilogue} {cfg.kwargs}",
                    )
                )
    return [f for f in failures if f]


if __name__ == "__main__":
    failed = compile_all(quick="--quick" in sys.argv)
    print(f"{len(failed)} kernel(s) failed to compile for sm_90" if failed else "all kernels compile for sm_90")
    sys.exit(1 if failed else 0)
