"""End to end on CPU with the real trainer: a 2x2 mini-sweep (estimate, run, resume, analyze), then
`tinystories inspect` on one of its checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tinystories.sweep import SweepConfig, analyze, collect_results, estimate, run_sweep
from tinystories.sweep.grid import prepare_data, read_status

pytestmark = pytest.mark.slow

# Tiny shapes, 12 steps of 16 x 64 tokens, the trainer's offline demo corpus kept small.
TRAIN = {
    "batch_size": "16",
    "seq_len": "64",
    "eval_every": "6",
    "eval_batches": "2",
    "ckpt_every": "6",
    "log_every": "3",
    "sample_max_new_tokens": "8",
    "demo_num_stories": "300",
    "warmup_steps": "2",
    "num_heads": "2",
    "device": "cpu",
    "tensorboard": "false",
    "loader_threads": "1",
}
TOKENS = 12 * 16 * 64


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[SweepConfig, dict]:
    out = tmp_path_factory.mktemp("sweep")
    config = SweepConfig(out_dir=str(out), hidden=[16, 32], layers=[1, 2], tokens=[TOKENS], overrides=TRAIN)
    projected = estimate(config, steps=2)
    run_sweep(config, poll_s=0.1)
    return config, projected


def test_mini_sweep_runs_every_grid_point_and_collects_one_table(sweep):
    config, _ = sweep
    rows = collect_results(config)
    assert [r["name"] for r in rows] == ["h16-l1-t12288", "h16-l2-t12288", "h32-l1-t12288", "h32-l2-t12288"]
    for r in rows:
        assert r["status"] == "done" and r["steps"] == 12 and r["tokens"] == TOKENS
        assert [t for t, _ in r["curve"]] == [6 * 1024, 12 * 1024]  # val loss at steps 6 and 12
        assert 0 < r["final_val_loss"] < 10 and r["compute"] == r["flops_per_token"] * TOKENS
        saved = json.loads((Path(config.out_dir) / r["name"] / "config.json").read_text())
        assert saved["model"]["hidden_size"] == r["hidden"] and saved["model"]["num_layers"] == r["layers"]
    assert rows[0]["non_embedding_params"] < rows[3]["non_embedding_params"]


def test_estimate_is_close_to_the_actual_wall_time(sweep):
    config, projected = sweep
    actual = {r.name: read_status(Path(config.out_dir) / r.name)["wall_s"] for r in config.runs()}
    estimated = {r["name"]: r["estimated_s"] for r in projected["runs"]}
    ratio = sum(actual.values()) / sum(estimated.values())
    # a loose bound: two shared CPU cores are noisy, but a wrong model of the run (steps, evals, start-up)
    # is off by far more than this
    assert 1 / 4 < ratio < 4, (actual, estimated)


def test_rerun_skips_finished_runs_and_a_changed_grid_is_refused(sweep):
    config, _ = sweep
    before = {r.name: read_status(Path(config.out_dir) / r.name)["attempts"] for r in config.runs()}
    run_sweep(config, poll_s=0.1)
    after = {r.name: read_status(Path(config.out_dir) / r.name)["attempts"] for r in config.runs()}
    assert before == after == {name: 1 for name in before}
    changed = SweepConfig(**{**config.to_dict(), "hidden": [16, 64]})
    with pytest.raises(ValueError, match="different hidden"):
        run_sweep(changed)


def test_one_run_per_gpu_slot_and_an_interrupted_run_resumes_from_its_checkpoint(sweep):
    config, _ = sweep
    # Two slots as with --gpus 0,1: each subprocess gets its own CUDA_VISIBLE_DEVICES (the CPU trainer
    # ignores it), and both runs go at once.
    two = SweepConfig(
        **{
            **config.to_dict(),
            "out_dir": str(Path(config.out_dir) / "resume"),
            "hidden": [16],
            "data": str(prepare_data(config)),
            "gpus": [0, 1],
        }
    )  # the shards already prepared
    rows = run_sweep(two, poll_s=0.1)
    assert [r["status"] for r in rows] == ["done", "done"]
    assert sorted(read_status(Path(two.out_dir) / r.name)["gpu"] for r in two.runs()) == ["0", "1"]
    directory = Path(two.out_dir) / two.runs()[0].name
    status = read_status(directory)
    status["status"] = "interrupted"  # as after a Ctrl-C: checkpoints exist, the run is not done
    (directory / "sweep-status.json").write_text(json.dumps(status))
    rows = run_sweep(two, poll_s=0.1)
    assert rows[0]["status"] == "done" and read_status(directory)["attempts"] == 2
    assert "--resume" in read_status(directory)["command"]
    assert read_status(Path(two.out_dir) / two.runs()[1].name)["attempts"] == 1


def test_analyze_writes_table_frontier_and_plot(sweep):
    config, _ = sweep
    report = analyze(config, points_mode="trajectory")
    out = Path(config.out_dir)
    for name in ("results.csv", "results.json", "scaling.json", "scaling.csv", "scaling.png"):
        assert (out / name).is_file(), name
    assert (out / "results.csv").read_text().count("\n") == 5
    frontier = report["frontier"]
    assert frontier and all(
        a["compute"] < b["compute"] and a["loss"] > b["loss"] for a, b in zip(frontier, frontier[1:])
    )


def test_inspect_neurons_and_heads_on_a_sweep_checkpoint(sweep, tmp_path):
    config, _ = sweep
    run = Path(config.out_dir) / "h32-l2-t12288"
    stories = tmp_path / "stories.txt"
    stories.write_text(
        "\n<|endoftext|>\n".join(
            [
                "Once upon a time, there was a little girl named Lily. She liked to play with her red ball.",
                "Tom had a big dog. The dog was happy. Tom and the dog ran to the park and played all day.",
                "One day, a cat saw a bird in the tree. The cat wanted to be friends with the bird.",
            ]
        )
        + "\n<|endoftext|>\n",
        encoding="utf-8",
    )
    data = str(prepare_data(config))  # the sweep's dataset: heads read its validation split
    for action, source, extra, files in (
        ("neurons", ["--stories", str(stories)], ["--examples", "3", "--show", "5"], ["neurons-layer0.html"]),
        (
            "heads",
            ["--data", data, "--num-stories", "5"],
            ["--heatmap-heads", "1.0,1.1"],
            ["heads.html", "heatmap-L1H0.png", "heatmap-L1H1.png"],
        ),
    ):
        out = tmp_path / action
        proc = subprocess.run(
            [sys.executable, "-m", "tinystories.cli", "inspect", action, str(run), *source, "--out", str(out), *extra],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for name in files:
            assert (out / name).is_file(), (name, proc.stdout)
    page = (tmp_path / "neurons" / "neurons-layer0.html").read_text()
    assert page.count("<h2") == 5 and "rgba(255,0,0," in page
    heads_page = (tmp_path / "heads" / "heads.html").read_text()
    assert "data:image/png;base64," in heads_page and "5 from " in heads_page
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinystories.cli",
            "inspect",
            "neurons",
            str(run),
            "--stories",
            str(stories),
            "--neurons",
            "999",
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "out of range" in bad.stderr


def test_grade_runs_the_evaluation_probes_over_every_finished_run(sweep):
    config, _ = sweep
    proc = subprocess.run(
        [sys.executable, "-m", "tinystories.cli", "sweep", "grade", config.out_dir, "--skip-grade"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdicts = [json.loads(line) for line in (Path(config.out_dir) / "eval" / "probes.jsonl").read_text().splitlines()]
    assert {Path(str(v.get("model", ""))).parent.name for v in verdicts} >= {r.name for r in config.runs()}
    assert (Path(config.out_dir) / "eval" / "probes.html").is_file()
