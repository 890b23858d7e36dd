"""``tinystories sweep status``: every grid point's state, step, last loss and job, from the run folders and the
scheduler; readable at any time (the trainer's logs are append-only and its checkpoints atomic). Also the loop
``sweep run`` follows a submitted sweep with.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tinystories.progress import Progress
from tinystories.sweep.cluster import ClusterError, ClusterOptions, live_jobs, read_jobs, submit
from tinystories.sweep.grid import RunPlan, SweepConfig, read_metrics, read_status, run_dir
from tinystories.sweep.job import last_step

STATES = ("pending", "running", "done", "failed", "damaged")
RUNNING_STATES = ("RUNNING", "COMPLETING", "CONFIGURING")  # SLURM's words for a job that has a node


def run_states(sweep: SweepConfig) -> list[dict[str, Any]]:
    """One row per grid point: name, state (one of STATES), step, max_steps, loss, job_id, scheduler, note and,
    for a failed run, the tail of its logs."""
    try:
        jobs = read_jobs(sweep)
        live, scheduler_error = live_jobs(jobs), None
    except ClusterError as exc:  # still show what the run folders say
        jobs, live, scheduler_error = {}, {}, str(exc)
    rows = []
    for run in sweep.runs():
        directory = run_dir(sweep, run)
        status = read_status(directory)
        job = jobs.get(run.name)
        scheduler = live.get(run.name)
        note = ""
        if status["status"] == "done":
            state = "done"
        elif status["status"] == "damaged" and not scheduler:
            state, note = "damaged", f"{status['problem']}; `sweep run` trains it again"
        elif scheduler:
            state = "running" if scheduler in RUNNING_STATES else "pending"
        elif status["status"] == "failed":
            state, note = "failed", f"exit {status.get('returncode')}; log: {directory / 'train.err'}"
        elif status["status"] == "running" and job is None:
            state = "running"  # the in-process runner (no scheduler)
        else:
            state = "pending"
            if job is not None or status["status"] != "pending":
                note = "stopped; `sweep run` resubmits it" if scheduler_error is None else scheduler_error
        if status.get("problem") and state != "damaged":  # e.g. done, but its final checkpoint was deleted
            note = status["problem"]
        loss, step = None, last_step(directory)
        records, damage = read_metrics(directory)
        for record in records:
            if "loss" in record:
                loss, step = record["loss"], max(step, record["step"])
        if damage:
            note = (note + "; " if note else "") + damage
        if status.get("requeues"):
            note = (note + "; " if note else "") + f"requeued {status['requeues']}x"
        rows.append(
            dict(
                name=run.name,
                state=state,
                step=step,
                max_steps=status.get("max_steps"),
                loss=loss,
                job_id=(job or {}).get("job_id") or status.get("job_id"),
                scheduler=scheduler,
                note=note,
                log_tail=status.get("log_tail", "") if state == "failed" else "",
            )
        )
    return rows


def status_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for column in ("run", "state", "step", "last loss", "job", "note"):
        table.add_column(column, justify="right" if column in ("step", "last loss") else "left")
    style = {"done": "green", "failed": "red", "running": "cyan", "pending": "yellow", "damaged": "red"}
    for r in rows:
        step = f"{r['step']}/{r['max_steps']}" if r["max_steps"] else str(r["step"])
        job = " ".join(x for x in (r["job_id"], r["scheduler"] and f"({r['scheduler']})") if x) or "-"
        table.add_row(
            r["name"],
            f"[{style[r['state']]}]{r['state']}",
            step,
            "-" if r["loss"] is None else f"{r['loss']:.4f}",
            job,
            r["note"],
        )
    return table


def follow(
    sweep: SweepConfig,
    to_submit: list[RunPlan],
    commands: dict[str, list[str]],
    options: ClusterOptions,
    console: Console,
    *,
    wait: bool = True,
    poll_s: float = 10.0,
) -> list[dict[str, Any]]:
    """Submit ``to_submit`` (at most ``max_parallel`` live jobs with the local executor, topped up as runs end;
    each run at most once here, so a failing run is not resubmitted in a loop) and, with ``wait``, follow the
    sweep until no job is queued or running. Returns :func:`run_states`."""
    queue = list(to_submit)

    def top_up() -> None:
        room = len(queue)
        if options.executor == "local" and options.max_parallel:
            room = max(0, options.max_parallel - len(live_jobs(read_jobs(sweep))))
        batch, queue[:] = queue[:room], queue[room:]
        if batch:
            submit(sweep, batch, commands, options)
            console.print(f"submitted {', '.join(p.run.name for p in batch)} ({options.executor})")

    top_up()
    rows = run_states(sweep)
    if not wait:
        return rows
    try:
        return _follow(sweep, queue, top_up, rows, console, poll_s)
    except KeyboardInterrupt:  # stop following; SLURM jobs go on (local ones got the Ctrl-C too)
        console.print(
            f"stopped following; `tinystories sweep status {sweep.out_dir}` shows the runs, "
            f"`tinystories sweep run --out {sweep.out_dir}` submits what is not queued"
        )
        raise


def _follow(
    sweep: SweepConfig, queue: list[RunPlan], top_up, rows: list[dict[str, Any]], console: Console, poll_s: float
) -> list[dict[str, Any]]:
    seen = {r["name"]: r["state"] for r in rows}
    with Progress(
        "runs done", len(rows), completed=sum(r["state"] == "done" for r in rows), enabled=console.is_terminal
    ) as progress:
        while queue or any(r["scheduler"] for r in rows):
            time.sleep(poll_s)
            top_up()
            rows = run_states(sweep)
            for r in rows:
                if seen[r["name"]] != r["state"]:
                    seen[r["name"]] = r["state"]
                    progress.print(
                        f"{r['name']}: {r['state']}"
                        + (f" ({r['note']})" if r["note"] else "")
                        + (f"\n{r['log_tail']}" if r["log_tail"] else "")
                    )
            progress.update(
                completed=sum(r["state"] == "done" for r in rows),
                status=" ".join(f"{s} {sum(r['state'] == s for r in rows)}" for s in STATES),
            )
    return rows


def print_status(out: str | Path, console: Console) -> list[dict[str, Any]]:
    sweep = SweepConfig.load(out)
    rows = run_states(sweep)
    console.print(status_table(rows, f"sweep {out}"))
    for r in rows:
        if r["log_tail"]:
            console.print(f"[red]{r['name']} failed[/red]; the end of its log:", highlight=False)
            console.print(r["log_tail"], markup=False, highlight=False)
    return rows
