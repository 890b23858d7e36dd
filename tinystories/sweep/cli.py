"""``tinystories sweep run|status|estimate|analyze|grade``.

tinystories sweep estimate --out runs/sweep --hidden 64,128,256 --layers 1,2,4 --tokens 50M,200M
tinystories sweep run      --out runs/sweep --hidden 64,128,256 --layers 1,2,4 --tokens 50M,200M --gpus 0,1,2,3
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

from tinystories.sweep.analysis import analyze, results_table, write_results
from tinystories.sweep.cluster import ClusterOptions, parse_time
from tinystories.sweep.grid import MANIFEST, SweepConfig, parse_count, trainer_overrides
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


def _add_grid_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="sweep directory (one run directory per grid point)")
    p.add_argument("--hidden", type=_int_list, help="hidden sizes, e.g. 64,128,256")
    p.add_argument("--layers", type=_int_list, help="layer counts, e.g. 1,2,4,8")
    p.add_argument("--tokens", type=_count_list, help="training token budgets, e.g. 50M,200M")
    p.add_argument("--preset", default="demo", help="trainer preset every run starts from (default demo)")
    p.add_argument(
        "--data",
        default=None,
        help="the trainer's --data (shard dir or text files); default: the trainer's offline demo corpus",
    )
    p.add_argument("--config", default=None, help="a trainer TOML file given to every run")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a trainer --key=value for every run (repeatable), e.g. --set batch_size=64",
    )
    p.add_argument("--gpus", type=_int_list, default=[], help="run one config per GPU on these ids, e.g. 0,1,2,3")


def _add_cluster_arguments(p: argparse.ArgumentParser) -> None:
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
    g.add_argument("--poll", type=float, default=10.0, help=argparse.SUPPRESS)


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


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = sub.add_parser("run", help="run (or resume) every grid point as a tinystories-train subprocess")
    _add_grid_arguments(run)
    run.add_argument("--estimate", action="store_true", help="only print the projected wall time (as `estimate`)")
    _add_cluster_arguments(run)
    run.add_argument("--probe-steps", type=int, default=5, help=argparse.SUPPRESS)
    run.add_argument("--target-hours", type=float, default=24.0, help=argparse.SUPPRESS)
    est = sub.add_parser("estimate", help="projected wall time per run and in total from a throughput probe")
    _add_grid_arguments(est)
    est.add_argument("--probe-steps", type=int, default=5, help="timed training steps per model shape")
    est.add_argument("--target-hours", type=float, default=24.0, help="say whether the sweep fits in this")
    ana = sub.add_parser("analyze", help="results table, loss-vs-compute frontier and the N_opt ~ C^a fit")
    ana.add_argument("out", help="sweep directory")
    ana.add_argument(
        "--points",
        choices=("auto", "final", "trajectory"),
        default="auto",
        help="final validation loss per run, or every validation point (auto: final when the "
        "grid has two or more token budgets)",
    )
    ana.add_argument("--params", choices=("non-embedding", "total"), default="non-embedding")
    ana.add_argument("--budgets", type=int, default=10, help="log-spaced compute budgets for N_opt")
    status = sub.add_parser("status", help="every grid point: pending/running/done/failed, step, last loss, job")
    status.add_argument("out", help="sweep directory")
    grade = sub.add_parser("grade", help="tinystories eval grade and probes over the sweep's finished runs")
    grade.add_argument("out", help="sweep directory")
    grade.add_argument(
        "--skip-grade", dest="grade", action="store_false", help="capability probes only (no judge needed)"
    )
    grade.add_argument("--skip-probes", dest="probes", action="store_false", help="judge grading only")
    grade.add_argument("--device", default="cpu")
    grade.add_argument("--judge-model", help="for `eval grade`: the judge model (e.g. gpt-4o)")
    grade.add_argument("--base-url", help="for `eval grade`: an OpenAI-compatible endpoint")
    grade.add_argument("--samples", type=int, help="for `eval grade`: completions per beginning")
    grade.add_argument(
        "--eval-args",
        default="",
        metavar='"ARGS"',
        help='any other `tinystories eval grade` options, quoted, with "=": '
        '--eval-args="--max-cost-usd 5 --limit-beginnings 20"',
    )


def sweep_from_args(args: argparse.Namespace) -> SweepConfig:
    """The grid of the command line, or the manifest of an existing sweep directory when none is given."""
    grid = (args.hidden, args.layers, args.tokens)
    if all(g is None for g in grid) and (Path(args.out) / MANIFEST).is_file():
        sweep = SweepConfig.load(args.out)
        if args.gpus:
            sweep.gpus = args.gpus
        return sweep
    missing = [n for n, g in zip(("--hidden", "--layers", "--tokens"), grid) if g is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (or point --out at an existing sweep directory)")
    overrides = trainer_overrides(
        _key_values(args.set, "--set"), warn=lambda text: print(f"tinystories sweep: warning: {text}", file=sys.stderr)
    )
    return SweepConfig(
        out_dir=args.out,
        hidden=args.hidden,
        layers=args.layers,
        tokens=args.tokens,
        preset=args.preset,
        data=args.data,
        train_config=args.config,
        overrides=overrides,
        gpus=args.gpus,
    )


def run_cli(args: argparse.Namespace) -> int:
    console = Console()
    try:  # the trainer's ConfigError is a ValueError
        if args.action in ("run", "estimate"):
            sweep = sweep_from_args(args)
            if args.action == "estimate" or args.estimate:
                estimate(sweep, steps=args.probe_steps, target_hours=args.target_hours, console=console)
                return 0
            cluster = cluster_from_args(args)
            if cluster is not None and sweep.gpus:
                raise ValueError("--gpus is for --executor process; with a scheduler use --gpus-per-run")
            rows = run_sweep(sweep, console=console, cluster=cluster, wait=args.wait)
            if not args.wait:
                console.print(f"`tinystories sweep status {sweep.out_dir}` follows the sweep")
                return 0
            write_results(rows, Path(sweep.out_dir))
            console.print(results_table(rows, f"sweep {sweep.out_dir}"))
            failed = [r["name"] for r in rows if r["status"] != "done"]
            if failed:
                console.print(
                    f"[red]{len(failed)} run(s) not finished:[/red] {', '.join(failed)}; "
                    f"`tinystories sweep run --out {sweep.out_dir}` resumes them"
                )
                return 1
            return 0
        if args.action == "status":
            rows = print_status(args.out, console)
            return 1 if any(r["state"] == "failed" for r in rows) else 0
        sweep = SweepConfig.load(args.out)
        if args.action == "analyze":
            analyze(sweep, points_mode=args.points, params=args.params, budgets=args.budgets, console=console)
            return 0
        extra = shlex.split(args.eval_args)
        for flag, value in (
            ("--judge-model", args.judge_model),
            ("--base-url", args.base_url),
            ("--samples", args.samples),
        ):
            if value is not None:
                extra += [flag, str(value)]
        for cmd in grade_commands(sweep, grade=args.grade, probes=args.probes, device=args.device, extra=extra):
            console.print(f"$ {' '.join(cmd)}")
            code = subprocess.run(cmd).returncode
            if code:
                return code
        return 0
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    except KeyboardInterrupt:  # what was done is kept; `sweep run` again continues
        return 130
