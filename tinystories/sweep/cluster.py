"""Sweeps through submitit: ``--executor slurm`` (one SLURM job array per submission) or ``--executor local``
(submitit's local executor, one process per run on this machine). Needs the ``cluster`` extra.

Every submitted job's id goes to ``<sweep>/jobs.json`` at once, so a later ``sweep run`` (after the submitting
shell died, say) asks the scheduler which recorded jobs are still queued or running and submits only the runs
that are neither finished nor queued. Run state itself lives in each run folder (see :mod:`.job`).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinystories.atomic import atomic_write_json
from tinystories.sweep.grid import RunPlan, SweepConfig, read_status, run_dir
from tinystories.sweep.job import TrainJob

JOBS_FILE = "jobs.json"
SUBMITIT_DIR = "submitit"  # submitit's own files: pickled jobs, its logs, sbatch scripts
EXTRA = 'pip install "tinystories[cluster]"'


class ClusterError(ValueError):
    """A scheduler or installation problem, reported in one line."""


@dataclass
class ClusterOptions:
    executor: str = "local"  # "local" | "slurm"
    partition: str | None = None
    gpus_per_run: int = 0  # more than one: the run is a torchrun of that many processes
    cpus_per_run: int | None = None
    time_min: int = 24 * 60  # the job's time limit; the run is checkpointed and requeued when it runs out
    account: str | None = None
    qos: str | None = None
    max_parallel: int | None = None  # runs at once (SLURM: the array's %N)
    slurm_args: dict[str, str] = field(default_factory=dict)  # any other sbatch --key=value
    max_timeouts: int = 3  # requeues after hitting the time limit (preemptions are not counted)
    signal_delay_s: int = 120  # SIGUSR2 this long before the time limit: time to finish a step and save
    poll_s: float = 10.0  # how often a waiting `sweep run` asks the scheduler


def parse_time(text: str) -> int:
    """SLURM's time formats in minutes: ``90``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise ValueError(f"--time {text!r}: expected minutes, HH:MM:SS or D-HH:MM:SS")
    a = int(m.group(2))  # the one group the pattern always matches
    days, b, c = (int(g) if g else None for g in m.group(1, 3, 4))
    if days is not None:  # D-HH[:MM[:SS]]
        minutes = days * 1440 + a * 60 + (b or 0) + (1 if c else 0)
    elif b is not None and c is not None:  # HH:MM:SS (the pattern fills c only after b)
        minutes = a * 60 + b + (1 if c else 0)
    elif b is not None:  # MM:SS
        minutes = a + (1 if b else 0)
    else:
        minutes = a
    if minutes <= 0:
        raise ValueError(f"--time {text!r} must be positive")
    return minutes


def import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise ClusterError(f"--executor slurm/local needs submitit, which is not installed: {EXTRA}") from None
    return submitit


def make_executor(sweep: SweepConfig, options: ClusterOptions) -> Any:
    submitit = import_submitit()
    folder = Path(sweep.out_dir) / SUBMITIT_DIR
    if options.executor == "local":
        executor = submitit.LocalExecutor(folder, max_num_timeout=options.max_timeouts)
        executor.update_parameters(
            timeout_min=options.time_min, gpus_per_node=options.gpus_per_run, signal_delay_s=options.signal_delay_s
        )
        return executor
    try:
        executor = submitit.SlurmExecutor(folder, max_num_timeout=options.max_timeouts)
    except RuntimeError as exc:  # no srun on this machine
        raise ClusterError(f"--executor slurm: {exc}") from None
    parameters = dict(
        job_name=f"ts-{Path(sweep.out_dir).resolve().name}",
        time=options.time_min,
        nodes=1,
        ntasks_per_node=1,
        gpus_per_node=options.gpus_per_run or None,
        cpus_per_task=options.cpus_per_run,
        partition=options.partition,
        account=options.account,
        qos=options.qos,
        signal_delay_s=options.signal_delay_s,
        additional_parameters=dict(options.slurm_args) or None,
    )
    if options.max_parallel:
        parameters["array_parallelism"] = options.max_parallel
    executor.update_parameters(**{k: v for k, v in parameters.items() if v is not None})
    return executor


def job_command(base: list[str], gpus_per_run: int) -> list[str]:
    """The trainer command of one job: torchrun on all the job's GPUs when it has more than one."""
    if gpus_per_run <= 1:
        return base
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={gpus_per_run}",
        *base[1:],
    ]


# -- the record of submitted jobs, and which of them the scheduler still holds -------------------------------
def read_jobs(sweep: SweepConfig) -> dict[str, dict[str, Any]]:
    path = Path(sweep.out_dir) / JOBS_FILE
    if not path.is_file():
        return {}
    try:
        jobs = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ClusterError(f"{path}: not JSON ({exc})") from None
    if not isinstance(jobs, dict) or not all(isinstance(j, dict) and "job_id" in j for j in jobs.values()):
        raise ClusterError(f"{path}: not a JSON object of run name -> job record")
    return jobs


def live_jobs(jobs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """``{run name: scheduler state}`` of the recorded jobs still queued or running (``PENDING``, ``RUNNING``...)."""
    slurm_ids = {j["job_id"] for j in jobs.values() if j["executor"] == "slurm"}
    queue = _squeue() if slurm_ids else {}
    live = {}
    for name, job in jobs.items():
        if job["executor"] == "slurm":
            state = queue.get(job["job_id"])
        else:
            state = "RUNNING" if local_job_alive(int(job["job_id"])) else None
        if state:
            live[name] = state
    return live


def _squeue() -> dict[str, str]:
    try:
        out = subprocess.run(
            ["squeue", "--noheader", "--array", "--format=%i|%T", f"--user={getpass.getuser()}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClusterError(f"squeue: {exc}") from None
    if out.returncode:
        raise ClusterError(f"squeue failed: {out.stderr.strip()}")
    return dict(line.split("|", 1) for line in out.stdout.split())


def local_job_alive(pid: int) -> bool:
    """Whether submitit's local controller ``pid`` still runs (and is one: pids are reused)."""
    try:  # our own child: reap it when it has ended
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False
    except ChildProcessError:
        pass
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return b"submitit.local" in cmdline and state != "Z"


# -- submitting and following ---------------------------------------------------------------------------------
def unfinished(sweep: SweepConfig, plans: list[RunPlan]) -> list[RunPlan]:
    """The runs that are neither done nor queued/running under a recorded job."""
    live = live_jobs(read_jobs(sweep))
    return [p for p in plans if p.run.name not in live and read_status(run_dir(sweep, p.run))["status"] != "done"]


def submit(sweep: SweepConfig, plans: list[RunPlan], commands: dict[str, list[str]], options: ClusterOptions) -> None:
    """Submit ``plans`` (one job each; SLURM: one array) and record their job ids in ``jobs.json`` at once."""
    if not plans:
        return
    executor = make_executor(sweep, options)
    with executor.batch():
        handles = [
            executor.submit(
                TrainJob(
                    str(run_dir(sweep, p.run)), job_command(commands[p.run.name], options.gpus_per_run), p.max_steps
                )
            )
            for p in plans
        ]
    jobs = read_jobs(sweep)
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    for plan, handle in zip(plans, handles):
        jobs[plan.run.name] = {
            "job_id": handle.job_id,
            "executor": options.executor,
            "submitted": now,
            "stdout": str(handle.paths.stdout),
        }
    atomic_write_json(Path(sweep.out_dir) / JOBS_FILE, jobs, indent=2)
