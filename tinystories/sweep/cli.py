"""``tinystories sweep run|status|estimate|analyze|grade``.

tinystories sweep estimate --out runs/sweep --hidden-size 64,128,256 --num-layers 1,2,4 --tokens 50M,200M
tinystories sweep run      --out runs/sweep --hidden-size 64,128,256 --num-layers 1,2,4 --tokens 50M,200M --gpus 0,1
tinystories sweep run      --out runs/sweep ... --executor slurm --partition gpu --gpus-per-run 1 --time 4:00:00
tinystories sweep status   runs/sweep          # pending/running/done/failed, step, last loss, job id
tinystories sweep analyze  runs/sweep          # table, frontier, N_opt ~ C^a with its CI, scaling.png
tinystories sweep grade    runs/sweep --judge-model gpt-4o   # the evaluation module over every run
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from tinystories.runtime.arguments import (
    ArgumentParser,
    add_base_url_argument,
    add_data_argument,
    add_device_arguments,
    add_judge_model_argument,
    add_num_samples_argument,
    add_out_argument,
    one_line_errors,
)
from tinystories.runtime.errors import WorkFailed
from tinystories.sweep.analysis import analyze
from tinystories.sweep.cluster import ClusterOptions, parse_time
from tinystories.sweep.grid import SweepConfig, parse_count, trainer_overrides
from tinystories.sweep.results import print_problems, results_table, write_results
from tinystories.sweep.runner import grade_commands, run_sweep
from tinystories.sweep.status import print_status
from tinystories.sweep.timing import estimate


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _count_list(text: str) -> list[int]:
    try:
        return [parse_count(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_grid_arguments(p: ArgumentParser) -> None:
    add_out_argument(p, "the sweep folder (one run folder per grid point)", required=True)
    p.add_argument("--hidden-size", type=_int_list, metavar="N,N,...", help="hidden sizes, e.g. 64,128,256")
    p.deprecate("--hidden", "--hidden-size")
    p.add_argument("--num-layers", type=_int_list, metavar="N,N,...", help="layer counts, e.g. 1,2,4,8")
    p.deprecate("--layers", "--num-layers")
    p.add_argument("--tokens", type=_count_list, metavar="N,N,...", help="training token budgets, e.g. 50M,200M")
    p.add_argument("--preset", default="demo", help="the trainer preset every run starts from")
    add_data_argument(
        p,
        note="every run's trainer --data (text files too, prepared by the trainer); default: its demo corpus",
    )
    p.add_argument("--config", default=None, help="a trainer TOML file given to every run")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a trainer field for every run, KEY kebab- or snake-case (repeatable), e.g. --set batch-size=64",
    )
    p.add_argument("--gpus", type=_int_list, default=[], help="run one config per GPU on these ids, e.g. 0,1,2,3")


def _add_cluster_arguments(p: ArgumentParser) -> None:
    g = p.add_argument_group('scheduler (submitit; pip install "tinystories[cluster]")')
    g.add_argument(
        "--executor",
        choices=("process", "local", "slurm"),
        default="process",
        help="process: subprocesses of this command (--gpus); local: submitit's local executor; "
        "slurm: a SLURM job array",
    )
    g.add_argument("--partition", help="SLURM partition")
    g.add_argument("--gpus-per-run", type=int, default=0, help="GPUs per run (more than one: torchrun)")
    g.add_argument("--cpus-per-run", type=int, help="CPUs per run (SLURM --cpus-per-task)")
    g.add_argument(
        "--time",
        default="24:00:00",
        help="time limit per job (minutes, HH:MM:SS or D-HH:MM:SS); a run that hits it is checkpointed and requeued",
    )
    g.add_argument("--account", help="SLURM account")
    g.add_argument("--qos", help="SLURM quality of service")
    g.add_argument("--max-parallel", type=int, help="runs at once (SLURM: the job array's %%N)")
    g.add_argument(
        "--slurm-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other sbatch option (repeatable), e.g. --slurm-arg mem=16G --slurm-arg constraint=a100",
    )
    g.add_argument(
        "--no-wait", dest="wait", action="store_false", help="submit and return (follow with `sweep status`)"
    )
    g.add_argument("--poll", type=float, default=10.0, help="seconds between two looks at the scheduler's jobs")


def _add_estimate_arguments(p: ArgumentParser) -> None:
    p.add_argument("--probe-steps", type=int, default=5, help="timed training steps per model shape")
    p.add_argument("--target-hours", type=float, default=24.0, help="say whether the sweep fits in this")


def _add_sweep_argument(p: ArgumentParser) -> None:
    p.add_argument("sweep", type=Path, metavar="SWEEP", help="a sweep folder (sweep run --out)")


def _key_values(items: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        pairs[key.strip().lstrip("-")] = value
    return pairs


def cluster_from_args(args: argparse.Namespace) -> ClusterOptions | None:
    if args.executor == "process":
        return None
    for flag, value in (
        ("--gpus-per-run", args.gpus_per_run),
        ("--cpus-per-run", args.cpus_per_run),
        ("--max-parallel", args.max_parallel),
    ):
        least = 0 if flag == "--gpus-per-run" else 1
        if value is not None and value < least:
            raise ValueError(f"{flag} {value}: must be at least {least}")
    if args.executor == "local" and (args.partition or args.account or args.qos or args.slurm_arg):
        raise ValueError("--partition/--account/--qos/--slurm-arg are SLURM options; use --executor slurm")
    return ClusterOptions(
        executor=args.executor,
        partition=args.partition,
        gpus_per_run=args.gpus_per_run,
        cpus_per_run=args.cpus_per_run,
        time_min=parse_time(args.time),
        account=args.account,
        qos=args.qos,
        max_parallel=args.max_parallel,
        slurm_args=_key_values(args.slurm_arg, "--slurm-arg"),
        poll_s=args.poll,
    )


def add_cli_arguments(parser: ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = sub.add_parser("run", help="run (or resume) every grid point as a tinystories-train subprocess")
    _add_grid_arguments(run)
    run.add_argument("--estimate", action="store_true", help="only print the projected wall time (as `estimate`)")
    _add_cluster_arguments(run)
    _add_estimate_arguments(run)
    est = sub.add_parser("estimate", help="projected wall time per run and in total from a throughput probe")
    _add_grid_arguments(est)
    _add_estimate_arguments(est)
    ana = sub.add_parser("analyze", help="results table, loss-vs-compute frontier and the N_opt ~ C^a fit")
    _add_sweep_argument(ana)
    ana.add_argument(
        "--points",
        choices=("auto", "final", "trajectory"),
        default="auto",
        help="final validation loss per run, or every validation point (auto: final when the "
        "grid has two or more token budgets)",
    )
    ana.add_argument(
        "--params",
        choices=("non-embedding", "total"),
        default="non-embedding",
        help="which parameter count N is (the paper's: non-embedding)",
    )
    ana.add_argument("--budgets", type=int, default=10, help="log-spaced compute budgets for N_opt")
    status = sub.add_parser("status", help="every grid point: pending/running/done/failed, step, last loss, job")
    _add_sweep_argument(status)
    grade = sub.add_parser("grade", help="tinystories eval grade and probes over the sweep's finished runs")
    _add_sweep_argument(grade)
    grade.add_argument(
        "--skip-grade", dest="grade", action="store_false", help="capability probes only (no judge needed)"
    )
    grade.add_argument("--skip-probes", dest="probes", action="store_false", help="judge grading only")
    add_device_arguments(grade)
    add_judge_model_argument(grade, note="for `eval grade`")
    add_base_url_argument(grade)
    add_num_samples_argument(grade, default=10, note="default 10 here (as `eval grade`)")
    grade.deprecate("--samples", "--num-samples")
    grade.add_argument(
        "--eval-args",
        default="",
        metavar='"ARGS"',
        help='any other `tinystories eval grade` options, quoted, with "=": '
        '--eval-args="--max-cost-usd 5 --limit-beginnings 20"',
    )


def sweep_from_args(args: argparse.Namespace) -> SweepConfig:
    """The grid of the command line, or the manifest of an existing sweep directory when none is given."""
    grid = (args.hidden_size, args.num_layers, args.tokens)
    if all(g is None for g in grid):  # the grid of an existing sweep
        sweep = SweepConfig.load(args.out)
        if args.gpus:
            sweep.gpus = args.gpus
        return sweep
    missing = [n for n, g in zip(("--hidden-size", "--num-layers", "--tokens"), grid) if g is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (or point --out at an existing sweep folder)")
    overrides = trainer_overrides(
        _key_values(args.set, "--set"),
        warn=lambda text: print(f"tinystories sweep {args.action}: warning: {text}", file=sys.stderr),
    )
    return SweepConfig(
        out_dir=str(args.out),
        hidden=args.hidden_size,
        layers=args.num_layers,
        tokens=args.tokens,
        preset=args.preset,
        data=args.data,
        train_config=args.config,
        overrides=overrides,
        gpus=args.gpus,
    )


@one_line_errors("tinystories sweep")
def run_cli(args: argparse.Namespace) -> int:
    console = Console()
    if args.action in ("run", "estimate"):
        sweep = sweep_from_args(args)
        if args.action == "estimate" or args.estimate:
            estimate(sweep, steps=args.probe_steps, target_hours=args.target_hours, console=console)
            return 0
        return _run(args, sweep, console)
    if args.action == "status":
        rows = print_status(args.sweep, console)
        failed = [r["name"] for r in rows if r["state"] == "failed"]
        damaged = [r["name"] for r in rows if r["state"] == "damaged"]
        if failed or damaged:
            raise WorkFailed(
                "; ".join(
                    [f"{len(failed)} run(s) failed: {', '.join(failed)} (the end of each log is above)"] * bool(failed)
                    + [f"{len(damaged)} run(s) with a damaged status file: {', '.join(damaged)}"] * bool(damaged)
                )
            )
        return 0
    sweep = SweepConfig.load(args.sweep)
    if args.action == "analyze":
        analyze(sweep, points_mode=args.points, params=args.params, budgets=args.budgets, console=console)
        return 0
    extra = [*shlex.split(args.eval_args), "--num-samples", str(args.num_samples)]
    for flag, value in (("--judge-model", args.judge_model), ("--base-url", args.base_url)):
        if value is not None:
            extra += [flag, str(value)]
    commands = grade_commands(
        sweep, grade=args.grade, probes=args.probes, device=args.device, dtype=args.dtype, extra=extra
    )
    for cmd in commands:
        console.print(f"$ {' '.join(cmd)}")
        code = subprocess.run(cmd).returncode
        if code:
            return code
    return 0


def _run(args: argparse.Namespace, sweep: SweepConfig, console: Console) -> int:
    cluster = cluster_from_args(args)
    if cluster is not None and sweep.gpus:
        raise ValueError("--gpus is for --executor process; with a scheduler use --gpus-per-run")
    rows = run_sweep(sweep, console=console, cluster=cluster, wait=args.wait)
    if not args.wait:
        console.print(f"`tinystories sweep status {sweep.out_dir}` follows the sweep")
        return 0
    write_results(rows, Path(sweep.out_dir))
    console.print(results_table(rows, f"sweep {sweep.out_dir}"))
    print_problems(rows, console)
    failed = [r["name"] for r in rows if r["status"] != "done"]
    if failed:  # what was done is kept; `sweep run` again continues
        raise WorkFailed(
            f"{len(failed)} run(s) not finished: {', '.join(failed)}; "
            f"`tinystories sweep run --out {sweep.out_dir}` resumes them"
        )
    return 0
