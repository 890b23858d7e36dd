"""Running a sweep: every unfinished grid point as a ``tinystories-train`` subprocess, one at a time on one
device or one per GPU (``CUDA_VISIBLE_DEVICES``), or as submitit jobs (``--executor local|slurm``, see
:mod:`.cluster`). ``sweep run`` again on the same directory skips finished runs and resumes interrupted ones
(``--resume`` from their newest checkpoint)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from tinystories.atomic import atomic_write_json
from tinystories.model.checkpoint import list_checkpoints
from tinystories.progress import format_duration
from tinystories.runtime.processes import die_with_parent
from tinystories.sweep.cluster import ClusterOptions, live_jobs, read_jobs, unfinished
from tinystories.sweep.grid import (
    MANIFEST,
    RunPlan,
    SweepConfig,
    data_vocab_size,
    plan_runs,
    plan_warnings,
    prepare_data,
    read_status,
    run_dir,
    write_status,
)
from tinystories.sweep.job import STOP_GRACE_S
from tinystories.sweep.results import collect_results
from tinystories.sweep.status import follow
from tinystories.train.lock import lock_holder


def train_command(sweep: SweepConfig, plan: RunPlan, data_dir: Path) -> list[str]:
    run = plan.run
    cmd = [sys.executable, "-m", "tinystories.train"]
    if sweep.train_config:
        cmd.append(sweep.train_config)
    cmd += [
        f"--preset={sweep.preset}",
        f"--hidden-size={run.hidden}",
        f"--num-layers={run.layers}",
        f"--max-steps={plan.max_steps}",
        f"--out={run_dir(sweep, run)}",
        f"--data={data_dir}",
        "--display=plain",
    ]
    return cmd + [f"--{k.replace('_', '-')}={v}" for k, v in sweep.overrides.items()]


def run_sweep(
    sweep: SweepConfig,
    *,
    console: Console | None = None,
    poll_s: float = 0.5,
    cluster: ClusterOptions | None = None,
    wait: bool = True,
) -> list[dict[str, Any]]:
    """Run every unfinished grid point; returns the collected results (see :func:`collect_results`).

    With ``cluster`` the runs are submitted through submitit instead (see :mod:`.cluster`), skipping those
    already queued; ``wait`` follows them to the end."""
    console = console or Console()
    out = Path(sweep.out_dir)
    manifest = out / MANIFEST
    if manifest.is_file():
        previous = SweepConfig.load(out).to_dict()  # (an older sweep.json's old trainer names read as the new)
        changed = sorted(
            k
            for k in ("hidden", "layers", "tokens", "preset", "data", "train_config", "overrides")
            if previous[k] != sweep.to_dict()[k]
        )
        if changed:
            raise ValueError(
                f"{out} holds a sweep with different {', '.join(changed)}; resume it with the same "
                f"grid or choose another --out"
            )
    data_dir = prepare_data(sweep)
    plans = plan_runs(sweep, data_vocab_size(data_dir))
    for warning in plan_warnings(plans):
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    atomic_write_json(manifest, sweep.to_dict(), indent=2)
    if cluster is not None:
        todo = unfinished(sweep, plans)
        console.print(
            f"sweep {out}: {len(plans)} runs, {len(plans) - len(todo)} done or queued, "
            f"{len(todo)} to submit ({cluster.executor})"
        )
        follow(
            sweep,
            todo,
            {p.run.name: train_command(sweep, p, data_dir) for p in todo},
            cluster,
            console,
            wait=wait,
            poll_s=cluster.poll_s,
        )
        return collect_results(sweep)

    busy = sorted(live_jobs(read_jobs(sweep)))
    if busy:  # this runner would train them a second time, beside their jobs
        raise ValueError(
            f"{len(busy)} run(s) of {out} are queued or running as scheduler jobs ({', '.join(busy)}); "
            f"rerun with the same --executor, or see `tinystories sweep status {out}`"
        )
    pending = [p for p in plans if read_status(run_dir(sweep, p.run))["status"] != "done"]
    slots: list[str | None] = [str(g) for g in sweep.gpus] or [None]
    console.print(
        f"sweep {out}: {len(plans)} runs, {len(plans) - len(pending)} already done, "
        f"{len(slots)} at a time" + (f" on GPUs {','.join(map(str, sweep.gpus))}" if sweep.gpus else "")
    )
    active: dict[subprocess.Popen, tuple[RunPlan, str | None, float]] = {}  # process -> (run, GPU, start)
    with _stop_signals() as received:
        try:
            while pending or active:
                while pending and len(active) < len(slots):
                    plan = pending.pop(0)
                    gpu = next(s for s in slots if s not in {g for _, g, _ in active.values()})
                    active[_start(sweep, plan, data_dir, gpu, console, poll_s)] = (plan, gpu, time.perf_counter())
                time.sleep(poll_s)
                for proc in [p for p in active if p.poll() is not None]:
                    plan, _, t0 = active.pop(proc)
                    _finish(sweep, plan, proc.returncode, time.perf_counter() - t0, console)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop the children (they save); a later `sweep run` resumes
            for proc in active:
                proc.send_signal(received[-1] if received else signal.SIGINT)
            for proc, (plan, _, t0) in active.items():
                try:
                    proc.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                _finish(sweep, plan, "interrupted", time.perf_counter() - t0, console)
            raise
    return collect_results(sweep)


@contextlib.contextmanager
def _stop_signals() -> Iterator[list[int]]:
    """SIGTERM (a scheduler, ``kill``, systemd) stops the sweep as Ctrl-C does: yields the signals received."""
    received: list[int] = []

    def stop(signum: int, _: Any) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def _start(
    sweep: SweepConfig, plan: RunPlan, data_dir: Path, gpu: str | None, console: Console, poll_s: float
) -> subprocess.Popen:
    directory = run_dir(sweep, plan.run)
    directory.mkdir(parents=True, exist_ok=True)
    _wait_for_lock(directory, plan.run.name, console, poll_s)
    status = read_status(directory)
    cmd = train_command(sweep, plan, data_dir) + (["--resume"] if list_checkpoints(directory) else [])
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    status.update(
        status="running", attempts=status.get("attempts", 0) + 1, command=cmd, gpu=gpu, max_steps=plan.max_steps
    )
    write_status(directory, status)
    console.print(
        f"[bold]start[/bold] {plan.run.name}: {plan.max_steps} steps x {plan.tokens_per_step:,} tokens"
        + (f" on GPU {gpu}" if gpu is not None else "")
        + ("  (resuming)" if "--resume" in cmd else "")
    )
    parent = os.getpid()
    with open(directory / "train.log", "a", encoding="utf-8") as log:  # the child holds its own descriptor
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        # Its own process group (a terminal's Ctrl-C reaches it once, forwarded above), and it stops (saving) when
        # this process dies in any way, SIGKILL included: no trainer outlives its sweep.
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=lambda: _trainer_process(parent),
        )
    write_status(directory, {**status, "trainer_pid": proc.pid})
    return proc


def _trainer_process(parent: int) -> None:
    os.setpgid(0, 0)
    die_with_parent(signal.SIGTERM, parent)


def _wait_for_lock(directory: Path, name: str, console: Console, poll_s: float) -> None:
    """A trainer of a killed ``sweep run`` may still be saving (it got SIGTERM when its parent died): wait for it
    to end, up to the time a stop may take; after that the new trainer reports who holds the run."""
    holder = lock_holder(directory)
    if holder is None:
        return
    console.print(f"{name}: waiting for its previous trainer (PID {holder.get('pid', '?')}) to stop")
    deadline = time.monotonic() + STOP_GRACE_S
    while lock_holder(directory) is not None and time.monotonic() < deadline:
        time.sleep(poll_s)


def _finish(sweep: SweepConfig, plan: RunPlan, returncode: int | str, wall_s: float, console: Console) -> None:
    directory = run_dir(sweep, plan.run)
    status = read_status(directory)
    ok = returncode == 0
    status.update(
        status="done" if ok else ("interrupted" if returncode == "interrupted" else "failed"),
        returncode=returncode,
        wall_s=status.get("wall_s", 0.0) + wall_s,
    )
    write_status(directory, status)
    style = "green" if ok else "red"
    tail = "" if ok else f" (see {directory / 'train.log'})"
    console.print(f"[{style}]{status['status']}[/{style}] {plan.run.name} in {format_duration(wall_s)}{tail}")


def finished_runs(sweep: SweepConfig) -> list[Path]:
    return [run_dir(sweep, r) for r in sweep.runs() if read_status(run_dir(sweep, r))["status"] == "done"]


def grade_commands(
    sweep: SweepConfig,
    *,
    grade: bool = True,
    probes: bool = True,
    device: str = "auto",
    dtype: str = "auto",
    extra: Sequence[str] = (),
) -> list[list[str]]:
    """``tinystories eval grade`` and ``eval probes`` over all finished runs' newest checkpoints at once, so
    the evaluation module lays the scores out by hidden size x layers as in the paper. Results go to
    ``<sweep>/eval``; ``extra`` (judge model, base URL, samples...) goes to ``eval grade``."""
    runs = [str(d) for d in finished_runs(sweep)]
    if not runs:
        raise ValueError(f"{sweep.out_dir}: no finished runs to grade yet")
    out = Path(sweep.out_dir) / "eval"
    base = [sys.executable, "-m", "tinystories.cli", "eval"]
    where = ["--device", device, "--dtype", dtype, "--out", str(out)]
    commands = []
    if grade:
        commands.append([*base, "grade", *runs, *where, *extra])
    if probes:
        commands.append([*base, "probes", *runs, *where])  # --out: out/probes.html and out/probes.jsonl
    return commands
