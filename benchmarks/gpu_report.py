#!/usr/bin/env python3
"""One command for a CUDA machine (within 8 minutes): kernel tests without the interpreter, ours vs peers per
kernel, and the end-to-end table of every preset, saved as JSON.

    pip install --no-build-isolation --no-deps .    # the package must be installed (editable works too)
    python benchmarks/gpu_report.py                 # everything, time-boxed to --budget-s (default 450 s)
    python benchmarks/gpu_report.py --skip-tests --only attention,linear_cross_entropy --no-e2e
    python benchmarks/gpu_report.py --dry-run --assume-capability 7.0    # no GPU: the plan and the path auto takes

1. ``pytest tests/test_kernels_*.py`` on the GPU (bf16 cases enabled, autotuning off for speed).
2. Per kernel case (the shapes of a 33M TinyStories model, see ``kernel_cases.py``): forward (with autograd recording,
   as in training), backward and full step time (CUDA events, median) and peak extra memory of every implementation,
   our max relative error against the plain reference, and the speed ratio to each peer from this same run.
3. End to end (``e2e_grid.py``): training-step tokens/s and peak memory of every paper preset under the path
   ``auto`` takes on this GPU, plain torch.compile, HF eager and HF compiled, in bf16 and fp16, V=50257 and
   V=10000 at 33M; the device capability and the path ``auto`` chose are in the report.
Work is ordered by importance (the tests alongside the compilation of the end-to-end cells, then ours and
uncompiled kernel peers, the end-to-end cells most important first, FlexAttention, torch.compile of the kernel
references) and skipped, listed in the report as "not measured", once
the budget would be exceeded. Results go to ``benchmarks/results/gpu_report-<date>-<card>.json`` (+ ``.txt``
table) and are copied to ``$OUT`` when set.
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
from dataclasses import asdict
from pathlib import Path

import e2e_grid  # benchmarks/ (this script's folder) is first on sys.path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
KERNELS = ("attention", "layer_norm", "mlp", "linear_cross_entropy")
# Seconds an item is assumed to need at most (start it only when that much budget is left).
COST_PLAIN_S, COST_COMPILED_S = 12, 75


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
    return {
        "returncode": rc,
        "timed_out": timed_out,
        "seconds": round(time.monotonic() - start, 1),
        "summary": summary.strip("= "),
        "tail": lines[-40:],
    }


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
    grad_out = (
        torch.randn(out.shape, generator=gen, device=out.device).to(out.dtype) if out.dim() else torch.ones_like(out)
    )

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
                log(
                    f"  {label:<58} fwd {row['fwd_ms']:8.3f} ms  bwd {row['bwd_ms']:8.3f} ms  full "
                    f"{row['full_ms']:8.3f} ms  peak {row['peak_extra_mb']:9.1f} MB  "
                    f"(first call {row['first_call_s']} s)"
                )
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
                rows_for(self.rows, case, "ours")["max_rel_err_vs_plain"] = relative_error(
                    results["ours"], results[case.baseline]
                )
                results.pop(case.baseline)
        del inputs, results
        torch.cuda.empty_cache()


def rows_for(rows: list[dict], case, impl: str) -> dict:
    return next(r for r in rows if r["kernel"] == case.kernel and r["case"] == case.name and r["impl"] == impl)


def kernel_table(rows: list[dict]) -> str:
    """Rows grouped by case with each peer's time relative to ours (x > 1: ours is faster)."""
    lines = [
        f"{'kernel / case':<46} {'impl':<13} {'fwd ms':>9} {'bwd ms':>9} {'full ms':>9} {'peak MB':>9} "
        f"{'peer/ours':>9}  note"
    ]
    cases = list(dict.fromkeys((r["kernel"], r["case"]) for r in rows))
    for kernel, case in cases:
        group = [r for r in rows if (r["kernel"], r["case"]) == (kernel, case)]
        ours = next((r for r in group if r["impl"] == "ours" and "full_ms" in r), None)
        for r in group:
            if "full_ms" not in r:
                lines.append(
                    f"{kernel + ' ' + case:<46} {r['impl']:<13} {'':>9} {'':>9} {'':>9} {'':>9} {'':>9}  "
                    f"{r.get('error', '')}"
                )
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
            lines.append(
                f"{'':<46} -> best peer {best['impl']}: speedup of ours {best['full_ms'] / ours['full_ms']:.2f}x "
                f"(>1: ours faster), peak memory ours {ours['peak_extra_mb']:.0f} MB vs {best['peak_extra_mb']:.0f} MB"
            )
    return "\n".join(lines)


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
        "card": props.name,
        "capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "memory_gb": round(props.total_memory / 1e9, 1),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_report(report: dict, table: str, results_dir: Path = RESULTS_DIR) -> list[Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    card = "".join(ch if ch.isalnum() else "-" for ch in report["environment"]["card"]).strip("-").lower()
    stem = f"gpu_report-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}-{card}"
    paths = []
    for suffix, text in ((".json", json.dumps(report, indent=2, default=str)), (".txt", table)):
        path = results_dir / f"{stem}{suffix}"
        tmp = path.with_suffix(suffix + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(path)  # atomic: a killed run never leaves half a report
        paths.append(path)
    if os.environ.get("OUT"):
        for path in paths:
            shutil.copy(path, Path(os.environ["OUT"]) / path.name)
    return paths


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=450, help="wall-clock budget for the whole run (s)")
    parser.add_argument("--tests-timeout-s", type=float, default=150, help="cap on the kernel test run (s)")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end model table")
    parser.add_argument(
        "--only", type=lambda s: s.split(","), default=list(KERNELS), help=f"subset of {','.join(KERNELS)}"
    )
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="dtype of the kernel cases")
    parser.add_argument("--e2e-presets", type=lambda s: tuple(s.split(",")), default=e2e_grid.PRESETS)
    parser.add_argument("--e2e-batch", type=int, default=64)
    parser.add_argument("--e2e-steps", type=int, default=6, help="timed training steps per cell (after 2 warm-up)")
    parser.add_argument(
        "--prewarm-workers",
        type=int,
        default=4,
        help="processes compiling the compiled cells in parallel first (0: none)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="no GPU needed: plan the table, resolve `auto` for --assume-capability, write the JSON "
        "with every cell 'not measured'",
    )
    parser.add_argument(
        "--assume-capability",
        type=lambda s: tuple(int(v) for v in s.split(".")),
        default=None,
        metavar="MAJOR.MINOR",
        help="with --dry-run: the GPU to plan for (default 9.0)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.only) - set(KERNELS)
    if unknown:
        parser.error(f"--only: unknown kernel(s) {sorted(unknown)}; choose from {KERNELS}")
    bad = set(args.e2e_presets) - set(e2e_grid.PRESETS)
    if bad:
        parser.error(f"--e2e-presets: unknown preset(s) {sorted(bad)}; choose from {','.join(e2e_grid.PRESETS)}")
    if args.assume_capability is not None and not args.dry_run:
        parser.error("--assume-capability only plans (--dry-run); a real run reads the GPU's own capability")
    return args


def dry_run(args: argparse.Namespace) -> int:
    """Everything but the GPU work: the plan, the path `auto` takes on the assumed GPU, the report skeleton."""
    from tinystories.kernels import kernels_available
    from tinystories.runtime.device import choose_execution

    capability = args.assume_capability or (9, 0)
    dtype, impl, compiled, reason = choose_execution(
        "cuda", capability, dtype="auto", impl="auto", compile=None, triton=(True, "")
    )
    auto = f"{dtype}, impl={impl}, compile={'on' if compiled else 'off'} ({reason})"
    cells = e2e_grid.plan_cells(capability, args.e2e_presets)
    rows = [
        {**asdict(c), "batch": args.e2e_batch, "seq_len": e2e_grid.SEQ_LEN, "not_measured": "dry run"} for c in cells
    ]
    report = {
        "environment": {
            "card": f"dry-run-sm{capability[0]}{capability[1]}",
            "capability": list(capability),
            "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
        "args": vars(args),
        "dry_run": True,
        "kernels_available_here": kernels_available(),
        "end_to_end": {"auto": auto, "rows": rows},
    }
    table = e2e_grid.format_table(rows, auto)
    log(
        f"dry run for sm_{capability[0]}{capability[1]}: {len(cells)} end-to-end cells, at most "
        f"{sum(e2e_grid.COST_S[c.path] for c in cells)} s once compiled\n{table}"
    )
    for path in write_report(report, table, args.results_dir):
        log(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    try:
        import tinystories.kernels
    except ImportError as exc:
        log(
            f"gpu_report.py: tinystories is not installed ({exc}); run `pip install --no-build-isolation --no-deps .` "
            f"in {REPO_ROOT} first"
        )
        return 2
    if args.dry_run:
        return dry_run(args)
    found = tinystories.kernels.__file__
    import torch

    if not torch.cuda.is_available():
        log("gpu_report.py needs a CUDA device (or --dry-run); on CPU run `pytest benchmarks/bench_kernels.py`.")
        return 2
    from tinystories.kernels import kernels_available
    from tinystories.runtime.device import resolve_execution

    report = {
        "environment": environment(),
        "args": vars(args),
        "tinystories.kernels": found,
        "kernels_available": kernels_available(),
        "liger_kernel": load_liger_wheel(),
    }
    log(f"== {report['environment']}")
    log(
        f"== kernels_available: {report['kernels_available']}  (package from {found}); "
        f"Liger-Kernel: {report['liger_kernel']}"
    )
    try:
        auto = resolve_execution(torch.device("cuda", 0))
    except ValueError as exc:  # ConfigError: e.g. this PyTorch build has no code for the GPU
        log(f"gpu_report.py: {exc}")
        return 2
    log(f"== {auto.describe()}")

    # The kernel tests and the compilation of the end-to-end cells are not timed: they run side by side first.
    cells = [] if args.no_e2e else e2e_grid.plan_cells(torch.cuda.get_device_capability(0), args.e2e_presets)
    tests: dict = {"skipped": "--skip-tests"}
    tests_thread = threading.Thread(target=lambda: tests.update(run_tests(args.tests_timeout_s)))
    if not args.skip_tests:
        tests.clear()
        log("\n== 1. kernel tests on the GPU (no interpreter, bf16 enabled), alongside the end-to-end prewarm")
        tests_thread.start()
    warm = e2e_grid.prewarm(cells, args.e2e_batch, args.prewarm_workers, min(240.0, budget.left() * 0.4), log)
    if not args.skip_tests:
        tests_thread.join()
        log(
            f"   -> tests: {tests.get('summary') or 'no summary'} (rc {tests.get('returncode')}, "
            f"{tests.get('seconds')} s)"
        )
    report["tests"] = tests

    kernels = KernelRun(args)
    log(
        f"\n== 2a. kernels: ours vs uncompiled peers ({args.dtype}; fwd records autograd as in training; "
        f"{budget.left():.0f} s left)"
    )
    kernels.run(kernels.plain_items(), budget, COST_PLAIN_S)
    report["end_to_end"] = {"auto": auto.describe(), "rows": [], "skipped": "--no-e2e"}
    if cells:
        log(f"\n== 3. end to end: {len(cells)} cells, most important first ({budget.left():.0f} s left)")
        rows = e2e_grid.run_cells(cells, args.e2e_batch, args.e2e_steps, budget, log)
        report["end_to_end"] = {"auto": auto.describe(), "prewarm": warm, "rows": rows}
    log(f"\n== 2b. kernels: FlexAttention ({budget.left():.0f} s left)")
    kernels.run(kernels.compiled_items("flex"), budget, COST_COMPILED_S)
    log(f"\n== 2c. kernels: torch.compile of the references ({budget.left():.0f} s left)")
    kernels.run(kernels.compiled_items("compiled-ref"), budget, COST_COMPILED_S)
    # group each case's rows together for the table, in case order
    order = {(c.kernel, c.name): i for i, c in enumerate(kernels.cases)}
    rows = sorted(kernels.rows, key=lambda r: order[(r["kernel"], r["case"])])
    table = kernel_table(rows)
    report["kernels"] = rows
    report["kernels_skipped"] = skipped = kernels.skipped
    if report["end_to_end"]["rows"]:
        table += (
            f"\n\nend to end (trainer's step: AdamW, clipping, GradScaler for fp16; T={e2e_grid.SEQ_LEN}, "
            f"B={args.e2e_batch}, random tokens; tokens/s, peak memory)\n"
            + e2e_grid.format_table(report["end_to_end"]["rows"], auto.describe())
        )
    table = f"{report['environment']}\ntests: {report['tests'].get('summary', report['tests'])}\n\n{table}"
    if skipped:
        table += "\n\nskipped:\n" + "\n".join(f"  {s}" for s in skipped)
    log("\n" + table)
    for path in write_report(report, table, args.results_dir):
        log(f"wrote {path}")
    return 0 if "skipped" in tests or tests.get("returncode") == 0 else 1  # (a test thread that died: 1)


if __name__ == "__main__":
    sys.exit(main())
