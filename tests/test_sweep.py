"""Sweeps: the grid, the compute-optimal analysis on synthetic losses, and (with the trainer) a real mini-sweep."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _processes import alive, children, kill_tree, wait_until

from tinystories.cli import main
from tinystories.model.checkpoint import list_checkpoints
from tinystories.sweep import collect_results
from tinystories.sweep.analysis import ScalingPoint, compute_optimal_sizes, fit_power_law, loss_frontier
from tinystories.sweep.grid import SweepConfig, format_count, parse_count, read_status
from tinystories.sweep.status import run_states
from tinystories.sweep.timing import makespan


def _chinchilla_points(noise: float, seed: int = 0) -> tuple[list[ScalingPoint], float]:
    """Losses L = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022's fit) on a grid of sizes x token budgets.

    With C = 6ND the compute-optimal size is N_opt ∝ C^(beta / (alpha + beta)).
    """
    E, A, B, alpha, beta = 1.69, 406.4, 410.7, 0.34, 0.28
    rng = np.random.default_rng(seed)
    points = []
    for n in np.geomspace(1e5, 1e8, 25):
        for d in np.geomspace(1e7, 1e12, 25):
            loss = (E + A / n**alpha + B / d**beta) * np.exp(rng.normal(0, noise))
            points.append(ScalingPoint(f"n{n:.0f}", n, 6 * n * d, loss))
    return points, beta / (alpha + beta)


@pytest.mark.parametrize("noise", [0.0, 0.003])
def test_power_law_fit_recovers_the_known_compute_optimal_exponent(noise):
    points, truth = _chinchilla_points(noise)
    optimal = compute_optimal_sizes(points, budgets=12)
    interior = [o for o in optimal if o.interior]
    assert len(interior) >= 5
    # the budgets where the best size is the grid's smallest/largest are flagged, not fitted
    assert any(not o.interior for o in optimal)
    fit = fit_power_law([o.compute for o in interior], [o.params for o in interior])
    assert fit.exponent == pytest.approx(truth, abs=0.03)
    assert fit.ci_low <= truth <= fit.ci_high
    assert 0 < fit.stderr < 0.05


def test_fit_power_law_exact_and_noisy():
    x = np.geomspace(1e10, 1e20, 9)
    exact = fit_power_law(x, 3.0 * x**0.5)
    assert exact.exponent == pytest.approx(0.5) and exact.coefficient == pytest.approx(3.0)
    assert exact.stderr == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(1)
    noisy = fit_power_law(x, 3.0 * x**0.5 * np.exp(rng.normal(0, 0.2, x.size)))
    assert noisy.ci_low < noisy.exponent < noisy.ci_high and noisy.ci_high - noisy.ci_low > 0.01
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_power_law([1, 2], [1, 2])


def test_frontier_keeps_only_points_nothing_cheaper_beats():
    pts = [
        ScalingPoint("a", 1, 1.0, 5.0),
        ScalingPoint("b", 2, 2.0, 4.0),
        ScalingPoint("a", 1, 3.0, 4.5),
        ScalingPoint("b", 2, 4.0, 3.0),
        ScalingPoint("c", 3, 4.0, 3.5),
    ]
    assert [(p.compute, p.loss) for p in loss_frontier(pts)] == [(1.0, 5.0), (2.0, 4.0), (4.0, 3.0)]


def test_optimal_size_switches_where_the_curves_cross():
    # small model: better at low compute, big model from log10 C = 0.75 on, where the curves cross
    pts = [ScalingPoint("small", 1e6, c, 3 - 0.1 * np.log10(c)) for c in (1, 10, 100)]
    pts += [ScalingPoint("big", 1e7, c, 3.075 - 0.2 * np.log10(c)) for c in (1, 10, 100)]
    optimal = compute_optimal_sizes(pts, budgets=5)
    assert [o.shape for o in optimal] == ["small", "small", "big", "big", "big"]
    with pytest.raises(ValueError, match="at least two model shapes"):
        compute_optimal_sizes(pts[:3])


def test_counts_grid_and_makespan():
    assert parse_count("50M") == 50_000_000 and parse_count("2.5k") == 2500 and parse_count("1e6") == 10**6
    with pytest.raises(ValueError, match="not a count"):
        parse_count("lots")
    assert format_count(50_000_000) == "50M"
    sweep = SweepConfig(out_dir="x", hidden=[64, 128], layers=[1, 2], tokens=[1000])
    assert [r.name for r in sweep.runs()] == ["h64-l1-t1k", "h64-l2-t1k", "h128-l1-t1k", "h128-l2-t1k"]
    close = SweepConfig(out_dir="x", hidden=[64], layers=[1], tokens=[12288, 12300, 2_500_000])
    assert [r.name for r in close.runs()] == ["h64-l1-t12288", "h64-l1-t12300", "h64-l1-t2500k"]
    with pytest.raises(ValueError, match="lists a value twice"):
        SweepConfig(out_dir="x", hidden=[64, 64], layers=[1], tokens=[10])
    with pytest.raises(ValueError, match="max_steps=... is set by the sweep"):
        SweepConfig(out_dir="x", hidden=[64], layers=[1], tokens=[10], overrides={"max_steps": "5"})
    with pytest.raises(ValueError, match="hidden must be"):
        SweepConfig(out_dir="x", hidden=[], layers=[1], tokens=[10])
    assert makespan([3, 1, 1, 1], 1) == 6 and makespan([3, 1, 1, 1], 2) == 3 and makespan([2, 2, 2], 4) == 2


# -- a real mini-sweep (the trainer in subprocesses), its files damaged, copied, deleted, its runner killed ----------
# 4 x 32 tokens a step: 1536 tokens are 12 steps (fewer than the 20 warmup steps), 8192 are 64.
TRAIN = [
    f"--set={key}={value}"
    for key, value in dict(
        num_heads=2,
        context=64,
        window_size=16,
        seq_len=32,
        batch_size=4,
        tensorboard="false",
        eval_batches=2,
        warmup_steps=20,
        lr=3e-3,
        sample_max_new_tokens=8,
        ckpt_every=4,
        eval_every=4,
        log_every=1,
        cpu_threads=1,
    ).items()
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "1000"}


def sweep_run_args(out: Path, data: Path, tokens: str = "1536", layers: str = "1,2") -> list[str]:
    grid = ["--hidden-size", "32", "--num-layers", layers, "--tokens", tokens]
    return ["sweep", "run", "--out", str(out), *grid, "--data", str(data), *TRAIN]


@pytest.fixture(scope="module")
def finished_sweep(tiny_shards, tmp_path_factory) -> tuple[Path, str]:
    """A finished two-run sweep (``sweep run`` as a user runs it) and what it printed."""
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    done = subprocess.run(
        [sys.executable, "-m", "tinystories.cli", *sweep_run_args(out, tiny_shards)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out, done.stdout


def last_checkpoint_step(run: Path) -> int:
    saved = list_checkpoints(run)
    return int(saved[-1].stem.split("_")[1]) if saved else 0


def copy_of(sweep: Path, where: Path) -> Path:
    shutil.copytree(sweep, where)
    return where


def test_runs_shorter_than_their_warmup_are_warned_about(finished_sweep):
    _, printed = finished_sweep
    warnings = [line for line in printed.splitlines() if "warning:" in line]
    assert len(warnings) == 2 and all("12 steps" in w and "warmup_steps=20" in w for w in warnings), printed
    assert {w.split("warning: ")[1].split(":")[0] for w in warnings} == {"h32-l1-t1536", "h32-l2-t1536"}


def test_a_copied_sweep_is_read_and_written_where_it_is(finished_sweep, tmp_path, capsys):
    original = copy_of(finished_sweep[0], tmp_path / "original")
    (original / "results.csv").unlink()
    copy = copy_of(original, tmp_path / "copy")  # its sweep.json still says out_dir=<the first sweep>
    assert json.loads((copy / "sweep.json").read_text())["out_dir"] != str(copy)
    assert main(["sweep", "analyze", str(copy)]) == 0
    capsys.readouterr()
    assert not (original / "results.csv").exists()
    assert len((copy / "results.csv").read_text().splitlines()) == 3
    shutil.rmtree(original / "h32-l1-t1536")  # what a command on the copy reads is the copy's
    assert main(["sweep", "status", str(copy)]) == 0
    assert capsys.readouterr().out.count("done") == 2


def test_a_run_whose_checkpoints_were_deleted_is_not_done_and_is_trained_again(finished_sweep, tmp_path, capsys):
    sweep = copy_of(finished_sweep[0], tmp_path / "sweep")
    run = sweep / "h32-l2-t1536"
    shutil.rmtree(run / "checkpoints")
    rows = {r["name"]: r for r in run_states(SweepConfig.load(sweep))}
    assert rows["h32-l1-t1536"]["state"] == "done" and rows["h32-l2-t1536"]["state"] == "pending"
    assert "final checkpoint (step 12) is missing" in rows["h32-l2-t1536"]["note"]
    assert main(["sweep", "run", "--out", str(sweep)]) == 0
    printed = capsys.readouterr().out
    assert "1 already done" in printed and "start h32-l2-t1536" in printed and "start h32-l1-t1536" not in printed
    assert last_checkpoint_step(run) == 12 and read_status(run)["status"] == "done"


def test_damaged_files_mark_their_run_and_the_rest_is_shown(finished_sweep, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # whole notes in the table
    sweep = copy_of(finished_sweep[0], tmp_path / "sweep")
    first, second = sweep / "h32-l1-t1536", sweep / "h32-l2-t1536"
    for damage in ("{garbage", "[]"):
        (first / "sweep-status.json").write_text(damage)
        assert main(["sweep", "status", str(sweep)]) == 1
        out, err = capsys.readouterr()
        assert "damaged" in out and f"{first / 'sweep-status.json'}: not" in out and out.count("done") == 1
        assert "1 run(s) with a damaged status file: h32-l1-t1536" in err and "Traceback" not in err
    (first / "sweep-status.json").write_text(json.dumps({"status": "done", "max_steps": 12}))

    lines = (second / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[3] = '{"step": 4, "lo\n'  # a torn record in the middle (a full disk), later records after it
    (second / "metrics.jsonl").write_text("".join(lines))
    assert main(["sweep", "status", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert f"{second / 'metrics.jsonl'}:4" in out and out.count("done") == 2
    assert main(["sweep", "analyze", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert f"{second / 'metrics.jsonl'}:4" in out
    rows = list(csv.DictReader((sweep / "results.csv").open()))
    assert [r["name"] for r in rows] == ["h32-l1-t1536", "h32-l2-t1536"] and rows[0]["final_val_loss"]

    (sweep / "sweep.json").write_text((sweep / "sweep.json").read_text()[:40])  # torn
    for action in ("status", "analyze"):
        assert main(["sweep", action, str(sweep)]) == 2
        err = capsys.readouterr().err
        assert f"{sweep / 'sweep.json'}: not a readable sweep manifest" in err and "Traceback" not in err


def test_nan_validation_losses_are_left_out_of_the_results(finished_sweep, tmp_path, capsys):
    sweep = copy_of(finished_sweep[0], tmp_path / "sweep")
    run = sweep / "h32-l1-t1536"
    finite = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["val_loss"] for r in finite if "val_loss" in r and r["step"] < 12]
    with open(run / "metrics.jsonl", "a") as f:  # the last evaluation diverged (json writes NaN as NaN)
        f.write(json.dumps({"step": 12, "val_loss": float("nan")}) + "\n")
    rows = {r["name"]: r for r in collect_results(SweepConfig.load(sweep))}
    row = rows["h32-l1-t1536"]
    assert row["best_val_loss"] == min(losses) and row["final_val_loss"] == losses[-1]
    assert all(math.isfinite(loss) for _, loss in row["curve"]) and len(row["curve"]) == len(losses)
    assert any("non-finite validation loss at step(s) 12" in p for p in row["problems"])
    assert main(["sweep", "analyze", str(sweep)]) == 0
    assert "nan" not in (sweep / "scaling.json").read_text().lower()


def test_the_frontier_skips_non_finite_losses():
    points = [ScalingPoint("a", 1.0, 1.0, float("nan")), ScalingPoint("a", 1.0, 2.0, 3.0)]
    points += [ScalingPoint("b", 2.0, 3.0, 2.5), ScalingPoint("b", 2.0, 4.0, float("inf"))]
    assert [p.loss for p in loss_frontier(points)] == [3.0, 2.5]


def metrics_step(run: Path) -> int:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return max((json.loads(line)["step"] for line in lines[:-1]), default=0)  # the last line may be torn


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_sweep_takes_its_trainer_with_it_and_a_rerun_resumes(tiny_shards, tmp_path, capsys, signum):
    out = tmp_path / "sweep"
    run = out / "h32-l1-t8192"
    with open(tmp_path / "runner.log", "w") as log:
        runner = subprocess.Popen(
            [sys.executable, "-m", "tinystories.cli", *sweep_run_args(out, tiny_shards, "8192", "1")],
            env=ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: metrics_step(run) >= 5, what="step 5 of the run")
        (trainer,) = children(runner.pid)
        runner.send_signal(signum)
        runner.wait(timeout=600)
        if signum == signal.SIGTERM:  # stopped as by Ctrl-C: the trainer was stopped (and waited for) first
            assert runner.returncode == 130 and not alive(trainer)
            assert read_status(run)["status"] == "interrupted"
        # an immediate rerun continues the run (waiting for a trainer that is still saving) to the end
        assert main(sweep_run_args(out, tiny_shards, "8192", "1")) == 0, capsys.readouterr()
        assert not alive(trainer)
        status = read_status(run)
        assert status["status"] == "done" and status["attempts"] == 2 and "--resume" in status["command"]
        first, second = (run / "train.log").read_text().split("\n$ ")[1:]  # each start: "$ command"
        assert "SIGTERM received: writing a checkpoint" in first and "stopped by SIGTERM" in first
        assert "resumed" in second
        assert last_checkpoint_step(run) == 64
    finally:
        kill_tree(runner.pid)
        runner.wait()
