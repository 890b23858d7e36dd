#!/usr/bin/env python3
"""One command for a CUDA machine: kernel tests without the interpreter, then ours vs peers, saved as JSON.

    pip install --no-build-isolation --no-deps .    # the package must be installed (editable works too)
    python benchmarks/gpu_report.py                 # everything, time-boxed to --budget-s (default 420 s)
    python benchmarks/gpu_report.py --skip-tests --only attention,linear_cross_entropy --no-e2e

1. ``pytest tests/test_kernels_*.py`` on the GPU (bf16 cases enabled, autotuning off for speed).
2. Per kernel case (the shapes of a 33M TinyStories model, see ``kernel_cases.py``): forward (with autograd recording, as in
   training), backward and full step time (CUDA events, median) and peak extra memory of every implementation,
   our max relative error against the plain reference, and the speed ratio to each peer from this same run.
3. End to end: training-step tokens/s of GPTNeo with impl="fused" vs impl="torch", eager and under
   torch.compile, and of Hugging Face's GPTNeoForCausalLM (eager fp16, compiled bf16).
Work is ordered by importance (ours and uncompiled peers, FlexAttention, eager end to end, compiled end to end at
the first preset, torch.compile of the kernel references, the remaining compiled end-to-end rows) and skipped,
listed in the report, once the budget would be exceeded. Results go to
``benchmarks/results/gpu_report-<date>-<card>.json`` (+ ``.txt`` table) and are copied to ``$OUT`` when set.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
KERNELS = ("attention", "layer_norm", "mlp", "linear_cross_entropy")
# Seconds an item is assumed to need at most (start it only when that much budget is left).
COST_PLAIN_S, COST_COMPILED_S, COST_E2E_S, COST_E2E_COMPILED_S = 12, 75, 25, 120


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allows(self, seconds: float) -> bool:
        return self.left() >= seconds


def log(message: str = "") -> None:
    print(message, flush=True)


# --- 1. tests ------------------------------------------------------------------------------------------


def run_tests(timeout_s: float) -> dict:
    # the sm_90 ahead-of-time compile check is for machines without a GPU; here every kernel really compiles
    files = sorted(
        str(p.relative_to(REPO_ROOT))
        for p in (REPO_ROOT / "tests").glob("test_kernels_*.py")
        if p.name != "test_kernels_compile_sm90.py"
    )
    # The installed package, never the source tree of the current folder (a plain install lacks the compiled
    # parts there): drop the folder `python -c` puts first on sys.path.
    boot = "import sys; sys.path.pop(0); import pytest; sys.exit(pytest.main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", boot, "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra", "--timeout=150", *files]
    env = {**os.environ, "TINYSTORIES_AUTOTUNE": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("TRITON_INTERPRET", None)
    log(f"$ pytest {' '.join(files)}  (timeout {timeout_s:.0f} s)")
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    lines = []
    for line in proc.stdout:
        print("  " + line, end="", flush=True)
        lines.append(line.rstrip())
    rc = proc.wait()
    timer.cancel()
    timed_out = time.monotonic() - start >= timeout_s and rc != 0
    summary = next((ln for ln in reversed(lines) if " passed" in ln or " failed" in ln or " error" in ln), "")
    return {"returncode": rc, "timed_out": timed_out, "seconds": round(time.monotonic() - start, 1),
            "summary": summary.strip("= "), "tail": lines[-40:]}  # fmt: skip


# --- 2. kernels ------------------------------------------------------------------------------------------


def cuda_ms(fn, setup=None, target_s: float = 0.2, min_reps: int = 5, max_reps: int = 50) -> float:
    """Median milliseconds of ``fn(setup())`` between CUDA events; ``setup`` runs outside the timed region."""
    import torch

    def once():
        arg = setup() if setup is not None else None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(arg)
        end.record()
        return start, end

    once()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    once()
    torch.cuda.synchronize()
    reps = max(min_reps, min(max_reps, int(target_s / max(time.perf_counter() - t0, 1e-5))))
    events = [once() for _ in range(reps)]
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def measure(case, impl: str, inputs: list) -> dict:
    """Times one implementation; also returns its output and gradients (for the error check) under "_result"."""
    import torch

    fn = case.impls[impl]
    diff = case.differentiable(inputs)
    t0 = time.perf_counter()
    out = fn(*inputs)
    torch.cuda.synchronize()
    first_call_s = time.perf_counter() - t0
    gen = torch.Generator(device=out.device).manual_seed(0)
    grad_out = torch.randn(out.shape, generator=gen, device=out.device).to(out.dtype) if out.dim() else torch.ones_like(out)

    def backward(o):
        return torch.autograd.grad(o, diff, grad_out)

    row = {"first_call_s": round(first_call_s, 2)}
    row["fwd_ms"] = cuda_ms(lambda _: fn(*inputs))
    row["bwd_ms"] = cuda_ms(backward, setup=lambda: fn(*inputs))
    row["full_ms"] = cuda_ms(lambda _: backward(fn(*inputs)))
    del out
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn(*inputs)
    grads = backward(out)
    torch.cuda.synchronize()
    row["peak_extra_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    row["_result"] = (out.detach(), [g.detach() for g in grads])
    return row


def relative_error(ours, baseline) -> float:
    pairs = [(ours[0], baseline[0]), *zip(ours[1], baseline[1])]
    return max(((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-12)).item() for a, b in pairs)


class KernelRun:
    """Times (case, implementation) items in a given order, sharing rows, skips and the error check."""

    def __init__(self, args):
        import torch
        from kernel_cases import all_cases

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
        self.dtype_name = args.dtype
        self.cases = [c for c in all_cases("gpu", "cuda", dtype) if c.kernel in args.only]
        self.rows: list[dict] = []
        self.skipped: list[str] = []
        self.fatal: str | None = None

    def plain_items(self) -> list:
        """Ours, the plain reference (our error is checked against it) and the peers that need no compilation."""
        return [(c, impl) for c in self.cases for impl in c.impls if impl not in c.compiled]

    def compiled_items(self, name: str) -> list:
        """The items of one compiled peer: "flex" (FlexAttention) or "compiled-ref" (torch.compile of the reference)."""
        return [(c, impl) for c in self.cases for impl in c.impls if impl == name and impl in c.compiled]

    def run(self, items: list, budget: Budget, cost_s: float) -> None:
        import torch
        from kernel_cases import PeerUnavailable

        current, inputs, results = None, None, {}
        for case, impl in items:
            label = f"{case.kernel} {case.name} {impl}"
            if self.fatal or not budget.allows(cost_s):
                self.skipped.append(f"{label}: {'after ' + self.fatal if self.fatal else 'out of time budget'}")
                continue
            if case is not current:
                current, inputs, results = case, None, {}
                torch.cuda.empty_cache()
                inputs = case.make_inputs()
            row = {"kernel": case.kernel, "case": case.name, "impl": impl, "dtype": self.dtype_name}
            try:
                row.update(measure(case, impl, inputs))
                results[impl] = row.pop("_result")
                log(f"  {label:<58} fwd {row['fwd_ms']:8.3f} ms  bwd {row['bwd_ms']:8.3f} ms  full "
                    f"{row['full_ms']:8.3f} ms  peak {row['peak_extra_mb']:9.1f} MB  (first call {row['first_call_s']} s)")  # fmt: skip
            except PeerUnavailable as exc:
                row["error"] = f"unavailable: {exc}"
                log(f"  {label:<58} skipped: {exc}")
            except Exception as exc:  # a refusing peer is a result; a broken CUDA context ends the run
                first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                row["error"] = f"{type(exc).__name__}: {first_line}"
                log(f"  {label:<58} FAILED: {row['error']}")
                if "CUDA error" in str(exc) or "illegal memory" in str(exc):
                    self.fatal = f"{label} broke the CUDA context"
                    traceback.print_exc()
            self.rows.append(row)
            if "ours" in results and case.baseline in results:
                rows_for(self.rows, case, "ours")["max_rel_err_vs_plain"] = relative_error(results["ours"], results[case.baseline])
                results.pop(case.baseline)
        del inputs, results
        torch.cuda.empty_cache()


def rows_for(rows: list[dict], case, impl: str) -> dict:
    return next(r for r in rows if r["kernel"] == case.kernel and r["case"] == case.name and r["impl"] == impl)


def kernel_table(rows: list[dict]) -> str:
    """Rows grouped by case with each peer's time relative to ours (x > 1: ours is faster)."""
    lines = [f"{'kernel / case':<46} {'impl':<13} {'fwd ms':>9} {'bwd ms':>9} {'full ms':>9} {'peak MB':>9} {'peer/ours':>9}  note"]
    cases = list(dict.fromkeys((r["kernel"], r["case"]) for r in rows))
    for kernel, case in cases:
        group = [r for r in rows if (r["kernel"], r["case"]) == (kernel, case)]
        ours = next((r for r in group if r["impl"] == "ours" and "full_ms" in r), None)
        for r in group:
            if "full_ms" not in r:
                lines.append(f"{kernel + ' ' + case:<46} {r['impl']:<13} {'':>9} {'':>9} {'':>9} {'':>9} {'':>9}  {r.get('error', '')}")
                continue
            ratio = f"{r['full_ms'] / ours['full_ms']:.2f}x" if ours and r is not ours else ""
            note = f"max rel err vs plain {r['max_rel_err_vs_plain']:.1e}" if "max_rel_err_vs_plain" in r else ""
            lines.append(
                f"{kernel + ' ' + case:<46} {r['impl']:<13} {r['fwd_ms']:9.3f} {r['bwd_ms']:9.3f} {r['full_ms']:9.3f} "
                f"{r['peak_extra_mb']:9.1f} {ratio:>9}  {note}"
            )
        peers = [r for r in group if r["impl"] != "ours" and "full_ms" in r]
        if ours and peers:
            best = min(peers, key=lambda r: r["full_ms"])
            lines.append(f"{'':<46} -> best peer {best['impl']}: speedup of ours {best['full_ms'] / ours['full_ms']:.2f}x "
                         f"(>1: ours faster), peak memory ours {ours['peak_extra_mb']:.0f} MB vs {best['peak_extra_mb']:.0f} MB")  # fmt: skip
    return "\n".join(lines)


# --- 3. end to end ---------------------------------------------------------------------------------------


E2E_EAGER = ("fused", "torch", "hf-eager-fp16")
E2E_COMPILED = ("fused+compile", "torch+compile")


def run_end_to_end(args, budget: Budget, items: list[tuple[str, str]], result: dict | None = None) -> dict:
    """Training-step tokens/s of (preset, impl) items: the project's GPTNeo with the kernels ("fused") vs its plain
    path ("torch"), eager or "+compile", under --e2e-dtype autocast, and Hugging Face's GPTNeoForCausalLM eager fp16
    ("hf-eager-fp16") or compiled bf16 ("hf-compiled-bf16") (AdamW, random tokens, T=512)."""
    import torch

    from tinystories.model import GPTNeo, config_from_preset

    result = result or {"rows": [], "skipped": []}
    rows, skipped = result["rows"], result["skipped"]
    for preset, impl in items:
        cost = COST_E2E_COMPILED_S if "compile" in impl else COST_E2E_S
        if not budget.allows(cost):
            skipped.append(f"{preset} {impl}: out of time budget")
            continue
        dtype = {"hf-eager-fp16": "fp16", "hf-compiled-bf16": "bf16"}.get(impl, args.e2e_dtype)
        row = {"preset": preset, "impl": impl, "batch": args.e2e_batch, "seq_len": 512, "autocast": dtype}
        config = config_from_preset(preset)
        try:
            if impl.startswith("hf-"):
                row.update(_hf_train_step_rate(config, args.e2e_batch, 512, dtype, compiled="compile" in impl))
            else:
                row.update(_train_step_rate(GPTNeo, config, impl, args.e2e_batch, 512, dtype))
            log(f"  {preset:<8} {impl:<16} {row['tokens_per_s']:>12,.0f} tokens/s  peak {row['peak_gb']:.2f} GB")
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
            log(f"  {preset:<8} {impl:<16} FAILED: {row['error']}")
        rows.append(row)
        torch.cuda.empty_cache()
    return result


def _train_step_rate(GPTNeo, config, impl: str, batch: int, seq_len: int, dtype: str, steps: int = 8) -> dict:
    import torch

    model = GPTNeo(config, impl="fused" if impl.startswith("fused") else "torch").cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    forward = torch.compile(model) if "compile" in impl else model
    idx = _random_tokens(config.vocab_size, batch, seq_len + 1)
    x, y = idx[:, :-1].contiguous(), idx[:, 1:].contiguous()

    def step():
        with torch.autocast("cuda", dtype=torch.float16 if dtype == "fp16" else torch.bfloat16):
            try:
                loss = forward(x, y, return_logits=False).loss
            except TypeError:  # a model without the return_logits switch
                loss = forward(x, y).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return _rate(step, batch * seq_len, steps)


def _hf_train_step_rate(config, batch: int, seq_len: int, dtype: str, compiled: bool, steps: int = 8) -> dict:
    """The Hugging Face peers: GPTNeoForCausalLM, eager fp16 or torch.compile'd bf16."""
    import torch
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    hf_config = GPTNeoConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_layers=config.num_layers,
        num_heads=config.num_heads, max_position_embeddings=config.max_position_embeddings,
        window_size=config.window_size, attention_types=[[list(config.attention_layers), 1]],
        intermediate_size=config.intermediate_size,
    )  # fmt: skip
    model = GPTNeoForCausalLM(hf_config).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    forward = torch.compile(model) if compiled else model
    idx = _random_tokens(config.vocab_size, batch, seq_len)

    def step():
        with torch.autocast("cuda", dtype=torch.float16 if dtype == "fp16" else torch.bfloat16):
            loss = forward(input_ids=idx, labels=idx).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return _rate(step, batch * seq_len, steps)


def _random_tokens(vocab_size: int, batch: int, length: int, device: str = "cuda"):
    import torch

    gen = torch.Generator(device=device).manual_seed(0)
    return torch.randint(0, vocab_size, (batch, length), generator=gen, device=device)


def _rate(step, tokens_per_step: int, steps: int) -> dict:
    import torch

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"tokens_per_s": tokens_per_step * steps / seconds, "step_ms": 1000 * seconds / steps,
            "peak_gb": torch.cuda.max_memory_allocated() / 1e9}  # fmt: skip


def load_liger_wheel() -> str:
    """Liger-Kernel is an optional peer: use the installed one, else a wheel carried in ``.whl/`` (pure Python)."""
    try:
        import liger_kernel  # noqa: F401

        return "installed"
    except ImportError:
        pass
    wheels = sorted((REPO_ROOT / ".whl").glob("liger_kernel-*.whl"))
    if not wheels:
        return "not installed (carry `pip download --no-deps liger-kernel -d .whl` to include it)"
    import tempfile
    import zipfile

    target = Path(tempfile.mkdtemp(prefix="liger-"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        wheel.extractall(target)
    sys.path.insert(0, str(target))
    return f"from {wheels[-1].name}"


# --- report ---------------------------------------------------------------------------------------------


def environment() -> dict:
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    props = torch.cuda.get_device_properties(0)
    return {
        "card": props.name, "sm_count": props.multi_processor_count, "memory_gb": round(props.total_memory / 1e9, 1),
        "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
        "python": platform.python_version(), "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip


def write_report(report: dict, table: str) -> list[Path]:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    card = "".join(ch if ch.isalnum() else "-" for ch in report["environment"]["card"]).strip("-").lower()
    stem = f"gpu_report-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}-{card}"
    paths = []
    for suffix, text in ((".json", json.dumps(report, indent=2, default=str)), (".txt", table)):
        path = RESULTS_DIR / f"{stem}{suffix}"
        tmp = path.with_suffix(suffix + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(path)  # atomic: a killed run never leaves half a report
        paths.append(path)
    if os.environ.get("OUT"):
        for path in paths:
            shutil.copy(path, Path(os.environ["OUT"]) / path.name)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=420, help="wall-clock budget for the whole run (s)")
    parser.add_argument("--tests-timeout-s", type=float, default=170, help="cap on the kernel test run (s)")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end model section")
    parser.add_argument("--only", type=lambda s: s.split(","), default=list(KERNELS), help=f"subset of {','.join(KERNELS)}")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--e2e-presets", type=lambda s: s.split(","), default=["33M", "1M"])
    parser.add_argument("--e2e-batch", type=int, default=64)
    parser.add_argument("--e2e-dtype", choices=("bf16", "fp16"), default="bf16", help="autocast dtype of ours/torch")
    args = parser.parse_args(argv)
    budget = Budget(args.budget_s)
    unknown = set(args.only) - set(KERNELS)
    if unknown:
        parser.error(f"--only: unknown kernel(s) {sorted(unknown)}; choose from {KERNELS}")

    try:
        import tinystories.kernels
    except ImportError as exc:
        log(f"gpu_report.py: tinystories is not installed ({exc}); run `pip install --no-build-isolation --no-deps .` "
            f"in {REPO_ROOT} first")
        return 2
    found = tinystories.kernels.__file__
    import torch

    if not torch.cuda.is_available():
        log("gpu_report.py needs a CUDA device; on CPU run `pytest benchmarks/bench_kernels.py` instead.")
        return 2
    from tinystories.kernels import kernels_available

    report = {"environment": environment(), "args": vars(args), "tinystories.kernels": found,
              "kernels_available": kernels_available(), "liger_kernel": load_liger_wheel()}  # fmt: skip
    log(f"== {report['environment']}")
    log(f"== kernels_available: {report['kernels_available']}  (package from {found}); Liger-Kernel: {report['liger_kernel']}")

    if args.skip_tests:
        report["tests"] = {"skipped": "--skip-tests"}
    else:
        log("\n== 1. kernel tests on the GPU (no interpreter, bf16 enabled)")
        report["tests"] = run_tests(min(args.tests_timeout_s, max(30.0, budget.left() * 0.45)))
        log(f"   -> {report['tests']['summary'] or 'no summary'} (rc {report['tests']['returncode']}, {report['tests']['seconds']} s)")

    # Cheap items first, so a short budget still yields ours vs the main peers; torch.compile items last.
    kernels = KernelRun(args)
    log(f"\n== 2a. kernels: ours vs uncompiled peers ({args.dtype}; fwd records autograd as in training; {budget.left():.0f} s left)")
    kernels.run(kernels.plain_items(), budget, COST_PLAIN_S)
    log(f"\n== 2b. kernels: FlexAttention ({budget.left():.0f} s left)")
    kernels.run(kernels.compiled_items("flex"), budget, COST_COMPILED_S)
    report["end_to_end"] = {"skipped": ["end to end: --no-e2e"], "rows": []}
    presets = args.e2e_presets
    e2e = not args.no_e2e
    if e2e:
        log(f"\n== 3a. end to end, eager ({budget.left():.0f} s left)")
        report["end_to_end"] = run_end_to_end(args, budget, [(p, i) for p in presets for i in E2E_EAGER])
        log(f"\n== 3b. end to end, torch.compile, {presets[0]} ({budget.left():.0f} s left)")
        run_end_to_end(args, budget, [(presets[0], i) for i in E2E_COMPILED], report["end_to_end"])
    log(f"\n== 2c. kernels: torch.compile of the references ({budget.left():.0f} s left)")
    kernels.run(kernels.compiled_items("compiled-ref"), budget, COST_COMPILED_S)
    if e2e:
        log(f"\n== 3c. end to end, the other compiled rows ({budget.left():.0f} s left)")
        later = [(p, i) for p in presets[1:] for i in E2E_COMPILED] + [(p, "hf-compiled-bf16") for p in presets]
        run_end_to_end(args, budget, later, report["end_to_end"])
    # group each case's rows together for the table, in case order
    order = {(c.kernel, c.name): i for i, c in enumerate(kernels.cases)}
    rows = sorted(kernels.rows, key=lambda r: order[(r["kernel"], r["case"])])
    table = kernel_table(rows)
    report["kernels"] = rows
    report["kernels_skipped"] = skipped = kernels.skipped
    e2e_rows = [r for r in report["end_to_end"]["rows"] if "tokens_per_s" in r]
    if e2e_rows:
        table += "\n\nend to end (AdamW, T=512, random tokens)\n" + "\n".join(
            f"{r['preset']:<8} {r['impl']:<16} {r['autocast']} B{r['batch']:<4} {r['tokens_per_s']:>12,.0f} tokens/s  "
            f"{r['step_ms']:8.1f} ms/step  peak {r['peak_gb']:.2f} GB"
            for r in e2e_rows
        )
    table = f"{report['environment']}\ntests: {report['tests'].get('summary', report['tests'])}\n\n{table}"
    all_skipped = [*skipped, *report["end_to_end"]["skipped"]]
    if all_skipped:
        table += "\n\nskipped:\n" + "\n".join(f"  {s}" for s in all_skipped)
    log("\n" + table)
    for path in write_report(report, table):
        log(f"wrote {path}")
    return 0 if report["tests"].get("returncode", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
