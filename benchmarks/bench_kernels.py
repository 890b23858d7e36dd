"""Fused kernels vs their peers, full training step (forward + backward), pytest-benchmark style.

    pytest benchmarks/bench_kernels.py            # GPU: a 33M model's shapes; CPU: tiny shapes in Triton's interpreter
    pytest benchmarks/bench_kernels.py -k attention

On CPU this only shows that every path runs (the interpreter executes Triton kernels in numpy, orders of magnitude
slower than the plain PyTorch peers); the GPU numbers are what count, and ``benchmarks/gpu_report.py`` adds
forward/backward splits, peak memory and torch.compile / FlexAttention peers in one time-boxed run. At the end a
table prints each peer's median time divided by ours, from this same run.
"""

from __future__ import annotations

import pytest
import torch
from kernel_cases import PeerUnavailable, all_cases

from tinystories.kernels import kernels_available

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
# bf16 on GPU (what training uses); fp32 on CPU, where the interpreter's bf16 arithmetic is wrong
CASES = all_cases("gpu" if ON_GPU else "cpu", DEVICE, torch.bfloat16 if ON_GPU else torch.float32)
PARAMS = [
    pytest.param(case, impl, id=f"{case.kernel}-{case.name.replace(' ', '_')}-{impl}")
    for case in CASES
    for impl in case.impls
    if impl not in case.compiled  # torch.compile peers are timed by gpu_report.py (minutes of compilation)
]
_medians: dict[tuple[str, str], dict[str, float]] = {}

pytestmark = pytest.mark.skipif(not kernels_available()[0], reason=kernels_available()[1])


@pytest.fixture(scope="module", autouse=True)
def ratio_table(pytestconfig):
    yield
    lines = [f"\n{'case':<52} {'impl':<10} {'median ms':>10} {'peer/ours':>10}"]
    for (kernel, name), medians in _medians.items():
        ours = medians.get("ours")
        for impl, ms in medians.items():
            ratio = f"{ms / ours:.2f}x" if ours and impl != "ours" else ""
            lines.append(f"{kernel + ' ' + name:<52} {impl:<10} {ms:10.3f} {ratio:>10}")
    note = "" if ON_GPU else "\n(CPU: ours runs in Triton's interpreter; ratios show the paths run, not speed)"
    if _medians:
        with pytestconfig.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
            print("\n".join(lines) + note, flush=True)


@pytest.mark.parametrize("case,impl", PARAMS)
def test_full_step(benchmark, case, impl):
    inputs = case.make_inputs()
    fn = case.impls[impl]
    diff = case.differentiable(inputs)
    try:
        out = fn(*inputs)
    except PeerUnavailable as exc:
        pytest.skip(str(exc))
    grad_out = torch.randn_like(out) if out.dim() else torch.ones_like(out)

    def step():
        grads = torch.autograd.grad(fn(*inputs), diff, grad_out)
        if ON_GPU:
            torch.cuda.synchronize()
        return grads

    benchmark.group = f"{case.kernel} {case.name}"
    rounds = 20 if ON_GPU else 2
    grads = benchmark.pedantic(step, rounds=rounds, warmup_rounds=1 if ON_GPU else 0, iterations=1)
    assert all(torch.isfinite(g).all() for g in grads)
    _medians.setdefault((case.kernel, case.name), {})[impl] = benchmark.stats.stats.median * 1e3
