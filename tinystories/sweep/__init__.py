"""Sweeps: the paper's grid of model shapes x token budgets, and the compute-optimal size it implies.

``grid`` (the grid, each point an ordinary resumable ``tinystories-train`` run), ``runner`` (runs them as
subprocesses, one per GPU when several are given, or through a scheduler), ``cluster`` (submitit: a SLURM job array
or the local executor, the record of job ids), ``job`` (one run as a job that checkpoints and requeues on preemption
or a time limit), ``status`` (``sweep status``: every grid point's state), ``timing`` (``sweep estimate``: projected
wall time from the trainer's own step timed on this device), ``results`` (a row per run), ``analysis`` (the
loss-vs-compute frontier, N_opt ∝ C^a with its confidence interval, ``scaling.png``) and ``cli``
(``tinystories sweep``)."""

from tinystories.sweep.analysis import analyze, compute_optimal_sizes, fit_power_law
from tinystories.sweep.cluster import ClusterOptions
from tinystories.sweep.grid import RunSpec, SweepConfig, parse_count
from tinystories.sweep.results import collect_results
from tinystories.sweep.runner import run_sweep
from tinystories.sweep.timing import estimate

__all__ = [
    "ClusterOptions",
    "RunSpec",
    "SweepConfig",
    "analyze",
    "collect_results",
    "compute_optimal_sizes",
    "estimate",
    "fit_power_law",
    "parse_count",
    "run_sweep",
]
