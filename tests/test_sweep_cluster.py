"""Sweeps through submitit: the local executor end to end (a run signalled mid-way is checkpointed, requeued
and ends with the weights of an uninterrupted run; a second `sweep run` after the submitter died submits
nothing that is queued), a real single-node SLURM cluster, and the errors of the scheduler options."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _processes import command_line, kill_tree, wait_until

from tinystories.cli import main
from tinystories.model.checkpoint import list_checkpoints, read_checkpoint
from tinystories.sweep.cluster import local_job_alive
from tinystories.sweep.grid import SweepConfig, read_status, run_dir
from tinystories.testing import slurm

needs_submitit = pytest.mark.skipif(
    importlib.util.find_spec("submitit") is None, reason='needs submitit (pip install "tinystories[cluster]")'
)

# 4 x 32 tokens a step (1536 tokens: 12 steps, 8192: 64 steps); a checkpoint every 2 steps.
TRAIN = [
    "--set",
    "num_heads=2",
    "--set",
    "context=64",
    "--set",
    "window_size=16",
    "--set",
    "seq_len=32",
    "--set",
    "batch_size=4",
    "--set",
    "tensorboard=false",
    "--set",
    "eval_batches=2",
    "--set",
    "warmup_steps=3",
    "--set",
    "lr=3e-3",
    "--set",
    "sample-max-new-tokens=8",
    "--set",
    "ckpt_every=2",
    "--set",
    "eval_every=100",
    "--set",
    "log_every=1",
    "--set",
    "cpu_threads=1",
    "--set",
    "keep_last=100",
]


def sweep_args(out: Path, dataset: Path, hidden: str, layers: str, tokens: str = "1536") -> list[str]:
    return [
        "sweep",
        "run",
        "--out",
        str(out),
        "--hidden-size",
        hidden,
        "--num-layers",
        layers,
        "--tokens",
        tokens,
        "--data",
        str(dataset),
        *TRAIN,
        "--poll",
        "0.5",
    ]


def metrics_step(directory: Path) -> int:
    path = directory / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return max((json.loads(line)["step"] for line in lines[:-1]), default=0)  # the last line may be torn


def job_trainer(job: int) -> int | None:
    """The trainer among the job process's children (the job may run other short-lived children, which must not
    be mistaken for it), or None while there is none."""
    try:
        children = [
            int(pid) for task in Path(f"/proc/{job}/task").iterdir() for pid in (task / "children").read_text().split()
        ]
    except OSError:  # the job or one of its threads ended meanwhile
        return None
    return next((pid for pid in children if b"tinystories.train" in command_line(pid)), None)


def stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` has stopped (state T)."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
    return bool(states) and all(state == "T" for state in states)


def freeze_trainer(directory: Path) -> int:
    """SIGSTOP the trainer of a run (the child of its job process), so that a signal surely finds it mid-run.
    Returns once every thread of it has stopped: a SIGTERM sent before then could be taken by a thread still
    running (the kernel delivers the lower-numbered SIGTERM before SIGSTOP), leaving no pending signal to see and
    a Python handler that never runs, as a CI run once showed (the job then SIGKILLed it after its grace)."""
    job = read_status(directory)["pid"]
    wait_until(lambda: job_trainer(job) is not None, what="the run's trainer")
    trainer = job_trainer(job)
    assert trainer is not None
    os.kill(trainer, signal.SIGSTOP)
    wait_until(lambda: stopped(trainer), what="every thread of the trainer to stop")
    return trainer


def thaw_when_sigterm_is_pending(trainer: int) -> None:
    """SIGCONT the frozen trainer once the job has sent it SIGTERM (as a real preemption finds it: mid-step)."""

    def pending() -> bool:
        status = Path(f"/proc/{trainer}/status")
        assert status.exists(), f"the frozen trainer {trainer} ended before its job's SIGTERM reached it"
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
        return any(int(fields[k], 16) >> (signal.SIGTERM - 1) & 1 for k in ("SigPnd", "ShdPnd"))

    wait_until(pending, what="the job's SIGTERM to the trainer")
    os.kill(trainer, signal.SIGCONT)


def final_weights(directory: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(list_checkpoints(directory)[-1])["model"]


@pytest.mark.slow
@needs_submitit
def test_local_executor_sweep_requeues_a_signalled_run_and_resumes_exactly(tiny_shards, tmp_path, capsys):
    trainers: list[int] = []
    try:
        _local_executor_sweep(tiny_shards, tmp_path, capsys, trainers)
    finally:  # a failed assertion must not leave the jobs running, nor the trainer it froze
        kill_local_jobs(tmp_path / "sweep")
        for trainer in trainers:
            if b"tinystories.train" in command_line(trainer):  # (not a later process given its pid)
                kill_tree(trainer)


def kill_local_jobs(out: Path) -> None:
    """Kill every job's controller with its job process and trainer (a frozen one too: it would never act on the
    SIGTERM its parent's death sends it)."""
    jobs = json.loads((out / "jobs.json").read_text()) if (out / "jobs.json").is_file() else {}
    for controller in (int(j["job_id"]) for j in jobs.values()):
        if local_job_alive(controller):  # else ended (its pid may be another process's by now)
            kill_tree(controller)


def _local_executor_sweep(tiny_shards: Path, tmp_path: Path, capsys, trainers: list[int]) -> None:
    out = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Submit and return, as a shell that then dies would: the jobs outlive the submitting process (and keep
    # its stdout open, so that goes to a file rather than a pipe this test would wait on).
    log = tmp_path / "submit.log"
    with open(log, "w") as stdout:
        first = subprocess.run(
            [
                sys.executable,
                "-m",
                "tinystories.cli",
                *sweep_args(out, tiny_shards, "32", "1,2", "1536,8192"),
                "--executor",
                "local",
                "--no-wait",
            ],
            stdout=stdout,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=900,
        )
    assert first.returncode == 0, log.read_text()
    jobs = json.loads((out / "jobs.json").read_text())
    assert len(jobs) == 4 and all(j["executor"] == "local" for j in jobs.values())
    assert main(sweep_args(out, tiny_shards, "32", "1,2", "1536,8192")) == 2  # the plain runner would duplicate them
    assert "queued or running as scheduler jobs" in capsys.readouterr().err

    # Signal one run as SLURM does before a time limit (SIGUSR2 to the job) once it is past a checkpoint.
    sweep = SweepConfig.load(out)
    target = run_dir(sweep, sweep.runs()[1])  # 64 steps
    wait_until(lambda: metrics_step(target) >= 5, what="step 5 of the first run")
    trainer = freeze_trainer(target)
    trainers.append(trainer)
    assert main(["sweep", "status", str(out)]) == 0  # readable while the runs go on
    table = capsys.readouterr().out
    assert "running" in table and jobs[target.name]["job_id"] in table
    os.kill(read_status(target)["pid"], signal.SIGUSR2)
    thaw_when_sigterm_is_pending(trainer)

    # `sweep run` again: nothing is submitted twice; it follows the jobs to the end.
    assert main(sweep_args(out, tiny_shards, "32", "1,2", "1536,8192") + ["--executor", "local"]) == 0
    printed = capsys.readouterr().out
    assert "0 to submit" in printed, printed
    assert json.loads((out / "jobs.json").read_text()) == jobs
    status = read_status(target)
    assert status["status"] == "done" and status["requeues"] == 1 and status["attempts"] == 2
    assert "--resume" in status["command"]
    assert "resumed" in (target / "train.log").read_text()

    assert main(["sweep", "status", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.count("done") == 4 and table.count("12/12") == 2 and table.count("64/64") == 2

    # The requeued run ends with exactly the weights of the same run trained straight through.
    straight = subprocess.run(
        status["command"][:-1] + [f"--out={tmp_path / 'straight'}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert straight.returncode == 0, straight.stderr
    a, b = final_weights(tmp_path / "straight"), final_weights(target)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@needs_submitit
def test_a_failing_run_fails_once_with_its_log_tail(tiny_shards, tmp_path, capsys):
    out, damaged = tmp_path / "sweep", tmp_path / "damaged"
    shutil.copytree(tiny_shards, damaged)  # a shard cut short: the trainer fails on its first batch, every time
    shard = damaged / "train-00000.tok.zst"
    shard.write_bytes(shard.read_bytes()[:1000])
    code = main(sweep_args(out, damaged, "32", "1") + ["--executor", "local"])
    printed = capsys.readouterr().out
    assert code == 1
    status = read_status(run_dir(SweepConfig.load(out), SweepConfig.load(out).runs()[0]))
    assert status["status"] == "failed" and status["attempts"] == 1 and status["returncode"] != 0
    assert "train.err" in status["log_tail"]
    assert main(["sweep", "status", str(out)]) == 1
    table = capsys.readouterr().out
    for text in (printed, table):  # the end of the trainer's log, where the run failed and when it is looked at
        assert "failed" in text and "truncated: 1000 bytes" in text, text


def test_scheduler_options_errors(tmp_path, capsys, monkeypatch):
    base = ["sweep", "run", "--out", str(tmp_path / "s"), "--hidden-size", "32", "--num-layers", "1", "--tokens", "1k"]
    assert main(base + ["--executor", "local", "--partition", "gpu"]) == 2
    assert "are SLURM options" in capsys.readouterr().err
    assert main(base + ["--executor", "slurm", "--time", "soon"]) == 2
    assert "--time 'soon'" in capsys.readouterr().err
    assert main(base + ["--executor", "slurm", "--slurm-arg", "mem"]) == 2
    assert "--slurm-arg expects KEY=VALUE, got 'mem'" in capsys.readouterr().err
    from tinystories.sweep.cluster import ClusterError, import_submitit, parse_time

    assert [parse_time(t) for t in ("90", "30:10", "1:30:00", "2-00:00:00", "1-2")] == [90, 31, 90, 2880, 1560]
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if the extra were not installed

    with pytest.raises(ClusterError, match=r'pip install "tinystories\[cluster\]"'):
        import_submitit()


@pytest.mark.slow
@needs_submitit
@pytest.mark.skipif(
    bool(slurm.missing_programs()) or os.geteuid() != 0,
    reason=f"needs root and SLURM + munge (missing: {slurm.missing_programs()})",
)
def test_slurm_sweep_runs_to_completion_through_a_requeue(tiny_shards, tmp_path, capsys):
    with slurm.slurm_cluster(tmp_path / "slurm"):
        out = tmp_path / "sweep"
        t0 = time.perf_counter()
        args = sweep_args(out, tiny_shards, "32", "1,2", "8192") + [
            "--executor",
            "slurm",
            "--partition",
            "debug",
            "--time",
            "10",
            "--cpus-per-run",
            "1",
            "--slurm-arg",
            "mem=1G",
        ]
        assert main(args + ["--no-wait"]) == 0
        jobs = json.loads((out / "jobs.json").read_text())
        assert len(jobs) == 2 and all(j["executor"] == "slurm" and "_" in j["job_id"] for j in jobs.values())
        script = next((out / "submitit").glob("*_submission.sh")).read_text()
        assert "#SBATCH --partition=debug" in script and "#SBATCH --mem=1G" in script and "--array=0-1" in script

        # SLURM's warning before a time limit (--signal=USR2@...), sent to every process of the job step: the
        # job checkpoints the trainer and requeues itself with `scontrol requeue`.
        sweep = SweepConfig.load(out)
        target = run_dir(sweep, sweep.runs()[0])
        wait_until(lambda: metrics_step(target) >= 5, what="step 5 of the first run")
        trainer = freeze_trainer(target)
        job_id = jobs[target.name]["job_id"]
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
        thaw_when_sigterm_is_pending(trainer)
        # SLURM holds a requeued job back for two minutes (its begin time); a test need not wait for that, only
        # until slurmd has finished the first attempt (else its end would be taken for the next one's).
        raw_id = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%A"], capture_output=True, text=True, check=True
        ).stdout.strip()
        slurmd_log = tmp_path / "slurm" / "log" / "slurmd.log"
        wait_until(
            lambda: (
                read_status(target).get("requeues") == 1
                and "PENDING"
                in subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
                and all(f"[{raw_id}.{step}] done with job" in slurmd_log.read_text() for step in ("batch", "0"))
            ),
            what="the requeue",
        )
        time.sleep(1)
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)

        assert main(args) == 0  # follows the recorded jobs to the end, submits nothing
        printed = capsys.readouterr().out
        assert "0 to submit" in printed, printed
        with capsys.disabled():
            print(f"\nSLURM: 2-run sweep with one requeue, submitted to done: {time.perf_counter() - t0:.1f}s")
        assert read_status(target)["requeues"] == 1 and read_status(target)["attempts"] == 2
        assert main(["sweep", "status", str(out)]) == 0
        table = capsys.readouterr().out
        assert table.count("done") == 2 and table.count("64/64") == 2
