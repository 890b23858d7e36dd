"""One grid point as a submitit job: runs ``tinystories-train`` in a subprocess, checkpoints and requeues on
preemption or a time limit, and fails (once, with its log tail) on a code error.

submitit runs :class:`TrainJob` inside the job; when the scheduler signals the end (``SIGUSR2``: SLURM's
``--signal`` before the time limit or a preemption; the local executor's timeout), submitit calls
:meth:`TrainJob.checkpoint`, which sends ``SIGTERM`` to the trainer, waits for it to stop and hands back a
fresh job to requeue. The trainer resumes bit-exactly from its newest checkpoint (``--resume``), so it does
not matter whether it saved one at the signal (it exits 128+15 then) or was simply stopped after its last
periodic checkpoint. Whether the run is finished is read from the run folder (a checkpoint at
``max_steps``), never from the exit status alone.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tinystories.model.checkpoint import list_checkpoints
from tinystories.runtime.processes import die_with_parent
from tinystories.sweep.grid import checkpoint_step, read_status, write_status

STDOUT, STDERR = "train.log", "train.err"  # the trainer's streams, in the run folder
STOP_GRACE_S = 120.0  # after SIGTERM, how long a step plus a checkpoint may take before SIGKILL
TAIL_LINES = 20
REQUEUE_WAIT_S = 30.0
# A trainer stopped by SIGTERM/SIGINT: killed by it, or (once it saves on the signal) exited 128+signum.
INTERRUPTED = {-signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGINT}


class RunFailed(RuntimeError):
    """The trainer failed on its own (a code or data error): the job ends failed, it is not requeued."""


def last_step(run_dir: Path) -> int:
    """The step of the newest complete checkpoint (0 when none)."""
    saved = list_checkpoints(run_dir)
    return checkpoint_step(saved[-1]) if saved else 0


def log_tail(run_dir: Path, lines: int = TAIL_LINES) -> str:
    parts = []
    for name in (STDOUT, STDERR):
        path = run_dir / name
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace").rstrip().splitlines()[-lines:]
            if text:
                parts.append(f"--- {path}\n" + "\n".join(text))
    return "\n".join(parts)


def update_status(run_dir: Path, **fields: Any) -> dict[str, Any]:
    status = read_status(run_dir)
    status.update(fields)
    write_status(run_dir, status)
    return status


def job_id_here() -> str | None:
    """The scheduler's id of the job this process runs in (submitit's spelling: ``<array>_<index>``)."""
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")


@dataclass
class TrainJob:
    """The picklable job of one run: the trainer command (without ``--resume``; added when checkpoints exist)."""

    run_dir: str
    command: list[str]
    max_steps: int
    _proc: subprocess.Popen | None = field(default=None, repr=False, compare=False)
    _started: float | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:  # the state of an attempt does not travel with a requeued job
        return {**self.__dict__, "_proc": None, "_started": None}

    def __call__(self) -> int:
        run_dir = Path(self.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if last_step(run_dir) >= self.max_steps:  # e.g. requeued after finishing, just before the signal
            update_status(run_dir, status="done", returncode=0)
            return self.max_steps
        cmd = self.command + (["--resume"] if list_checkpoints(run_dir) else [])
        status = read_status(run_dir)
        update_status(
            run_dir,
            status="running",
            attempts=status.get("attempts", 0) + 1,
            job_id=job_id_here(),
            host=socket.gethostname(),
            pid=os.getpid(),
            max_steps=self.max_steps,
            command=cmd,
        )
        self._started = t0 = time.perf_counter()
        with open(run_dir / STDOUT, "a", encoding="utf-8") as out, open(run_dir / STDERR, "a", encoding="utf-8") as err:
            out.write(f"\n$ {' '.join(cmd)}\n")
            out.flush()
            parent = os.getpid()
            self._proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=lambda: _trainer_signals(parent),
            )
            while (returncode := self._proc.poll()) is None:
                time.sleep(0.5)  # not Popen.wait(): it holds a lock that checkpoint(), a signal handler, needs
        wall_s = read_status(run_dir).get("wall_s", 0.0) + time.perf_counter() - t0
        if last_step(run_dir) >= self.max_steps and returncode == 0:
            update_status(run_dir, status="done", returncode=0, wall_s=wall_s)
            return self.max_steps
        if returncode in INTERRUPTED:  # signalled from outside (a SLURM preemption sends SIGTERM, then USR2)
            update_status(run_dir, status="interrupted", returncode=returncode, wall_s=wall_s)
            time.sleep(REQUEUE_WAIT_S)  # submitit's USR2 handler checkpoints and requeues meanwhile
            raise RunFailed(
                f"{run_dir}: the trainer was stopped by a signal (status {returncode}) and the job "
                f"was not requeued; `tinystories sweep run` resubmits it"
            )
        tail = log_tail(run_dir)
        update_status(run_dir, status="failed", returncode=returncode, wall_s=wall_s, log_tail=tail)
        raise RunFailed(
            f"{run_dir}: the trainer exited with status {returncode} at checkpoint step "
            f"{last_step(run_dir)}/{self.max_steps}; not requeued\n{tail}"
        )

    def checkpoint(self) -> Any:
        """submitit's preemption/time-limit hook: stop the trainer (it saves or has saved) and requeue."""
        import submitit

        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            if not _ended(proc, STOP_GRACE_S):  # the newest periodic checkpoint still resumes exactly
                proc.kill()
                _ended(proc, 10.0)
        run_dir = Path(self.run_dir)
        status = read_status(run_dir)
        attempt_s = time.perf_counter() - self._started if self._started is not None else 0.0
        update_status(
            run_dir,
            status="requeued",
            requeues=status.get("requeues", 0) + 1,
            wall_s=status.get("wall_s", 0.0) + attempt_s,
        )
        return submitit.helpers.DelayedSubmission(replace(self, _proc=None, _started=None))


def _trainer_signals(parent: int) -> None:
    """In the trainer process, before exec: SIGUSR2 is for the job process (submitit's handler), but SLURM
    signals every process of the job, and its default action would kill the trainer before it saves. And the
    trainer stops (saving, as on any SIGTERM) when the job process dies, e.g. killed by the local executor."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    die_with_parent(signal.SIGTERM, parent)


def _ended(proc: subprocess.Popen, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
