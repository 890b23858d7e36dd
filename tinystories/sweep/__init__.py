"""Sweeps: the paper's grid of model shapes x token budgets, and the compute-optimal size it implies.

``grid`` (the grid, each point an ordinary resumable ``tinystories-train`` run), ``runner`` (runs them as
subprocesses, one per GPU when several are given), ``timing`` (``sweep estimate``: projected wall time from
the trainer's own step timed on this device), ``analysis`` (results, the loss-vs-compute frontier,
N_opt ∝ C^a with its confidence interval, ``scaling.png``) and ``cli`` (``tinystories sweep``).
"""

from tinystories.sweep.analysis import analyze, collect_results, compute_optimal_sizes, fit_power_law
from tinystories.sweep.grid import RunSpec, SweepConfig, parse_count
from tinystories.sweep.runner import run_sweep
from tinystories.sweep.timing import estimate

__all__ = ["RunSpec", "SweepConfig", "analyze", "collect_results", "compute_optimal_sizes", "estimate",
           "fit_power_law", "parse_count", "run_sweep"]
