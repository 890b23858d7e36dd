"""``benchmarks/gpu_report.py`` cannot run its GPU work here; its plan, the path ``auto`` takes for each GPU
generation, the argument checks and the report/table writing run with ``--dry-run`` (a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import e2e_grid  # noqa: E402

PRESETS = ["1M", "3M", "8M", "28M", "33M", "21M-1L", "33M-2L"]


def dry_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_report.py"), "--dry-run", "--results-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "capability, auto", [("9.0", "bf16, impl=fused, compile=on"), ("7.0", "fp16, impl=hybrid, compile=on")]
)
def test_dry_run_plans_the_full_table_and_says_which_path_auto_takes(tmp_path, capability, auto):
    result = dry_run(tmp_path, "--assume-capability", capability)
    assert result.returncode == 0, result.stderr
    report = json.loads(next(tmp_path.glob("gpu_report-*-dry-run-sm*.json")).read_text())
    assert report["end_to_end"]["auto"].startswith(auto)
    rows = report["end_to_end"]["rows"]
    assert all(r["not_measured"] == "dry run" and "tokens_per_s" not in r for r in rows)
    cells = {(r["preset"], r["vocab"], r["path"], r["dtype"]) for r in rows}
    native = "bf16" if capability == "9.0" else "fp16"
    for preset in PRESETS:  # every preset x {auto, plain torch.compile, HF eager fp16, HF compiled}
        for path, dtype in (("auto", native), ("torch+compile", native), ("hf-eager", "fp16"), ("hf-compiled", native)):
            assert (preset, 50257, path, dtype) in cells
            assert ("33M", 10000, path, dtype) in cells
        assert {(preset, 50257, path, "fp16") for path in ("auto", "torch+compile")} <= cells  # fp16 everywhere
    assert (native == "fp16") == all(r["dtype"] == "fp16" for r in rows)  # no bf16 below sm_80
    assert len(rows) == len(cells) == (49 if native == "bf16" else 32)
    table = next(tmp_path.glob("gpu_report-*.txt")).read_text()
    assert table.count("not measured") == len(rows) and "| 33M | 10000 |" in table


def test_a_measured_failed_and_skipped_cell_each_read_as_what_they_are():
    cells = e2e_grid.plan_cells((8, 0), ("33M",))
    rows = [
        {**cell.__dict__, "tokens_per_s": 948_438.0, "peak_gb": 4.45}
        if i == 0
        else {**cell.__dict__, "error": "OutOfMemoryError: CUDA out of memory"}
        if i == 1
        else {**cell.__dict__, "not_measured": "out of time budget"}
        for i, cell in enumerate(cells)
    ]
    table = e2e_grid.format_table(rows, "bf16, impl=fused, compile=on")
    header, _, first, second = table.splitlines()[2:6]
    assert header.startswith("| preset | V | auto bf16 | torch+compile bf16 | hf-eager fp16 | hf-compiled bf16 |")
    assert first.startswith("| 33M | 50257 | 948k, 4.5 GB | failed: OutOfMemoryError | not measured |")
    assert second.startswith("| 33M | 10000 |")


def test_bad_arguments_stop_with_one_line(tmp_path, capsys):
    import gpu_report

    for argv, message in (
        (["--dry-run", "--e2e-presets", "33M,7B"], "unknown preset(s) ['7B']"),
        (["--assume-capability", "7.0"], "--assume-capability only plans"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            gpu_report.main([*argv, "--results-dir", str(tmp_path)])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
