"""Sweeps: the grid, the compute-optimal analysis on synthetic losses, and (with the trainer) a real mini-sweep."""

from __future__ import annotations

import numpy as np
import pytest

from tinystories.sweep.analysis import ScalingPoint, compute_optimal_sizes, fit_power_law, loss_frontier
from tinystories.sweep.grid import SweepConfig, format_count, parse_count
from tinystories.sweep.timing import makespan


def _chinchilla_points(noise: float, seed: int = 0) -> tuple[list[ScalingPoint], float]:
    """Losses L = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022's fit) on a grid of sizes x token budgets.

    With C = 6ND the compute-optimal size is N_opt ∝ C^(beta / (alpha + beta)).
    """
    E, A, B, alpha, beta = 1.69, 406.4, 410.7, 0.34, 0.28
    rng = np.random.default_rng(seed)
    points = []
    for n in np.geomspace(1e5, 1e8, 25):
        for d in np.geomspace(1e7, 1e12, 25):
            loss = (E + A / n**alpha + B / d**beta) * np.exp(rng.normal(0, noise))
            points.append(ScalingPoint(f"n{n:.0f}", n, 6 * n * d, loss))
    return points, beta / (alpha + beta)


@pytest.mark.parametrize("noise", [0.0, 0.003])
def test_power_law_fit_recovers_the_known_compute_optimal_exponent(noise):
    points, truth = _chinchilla_points(noise)
    optimal = compute_optimal_sizes(points, budgets=12)
    interior = [o for o in optimal if o.interior]
    assert len(interior) >= 5
    # the budgets where the best size is the grid's smallest/largest are flagged, not fitted
    assert any(not o.interior for o in optimal)
    fit = fit_power_law([o.compute for o in interior], [o.params for o in interior])
    assert fit.exponent == pytest.approx(truth, abs=0.03)
    assert fit.ci_low <= truth <= fit.ci_high
    assert 0 < fit.stderr < 0.05


def test_fit_power_law_exact_and_noisy():
    x = np.geomspace(1e10, 1e20, 9)
    exact = fit_power_law(x, 3.0 * x**0.5)
    assert exact.exponent == pytest.approx(0.5) and exact.coefficient == pytest.approx(3.0)
    assert exact.stderr == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(1)
    noisy = fit_power_law(x, 3.0 * x**0.5 * np.exp(rng.normal(0, 0.2, x.size)))
    assert noisy.ci_low < noisy.exponent < noisy.ci_high and noisy.ci_high - noisy.ci_low > 0.01
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_power_law([1, 2], [1, 2])


def test_frontier_keeps_only_points_nothing_cheaper_beats():
    pts = [
        ScalingPoint("a", 1, 1.0, 5.0),
        ScalingPoint("b", 2, 2.0, 4.0),
        ScalingPoint("a", 1, 3.0, 4.5),
        ScalingPoint("b", 2, 4.0, 3.0),
        ScalingPoint("c", 3, 4.0, 3.5),
    ]
    assert [(p.compute, p.loss) for p in loss_frontier(pts)] == [(1.0, 5.0), (2.0, 4.0), (4.0, 3.0)]


def test_optimal_size_switches_where_the_curves_cross():
    # small model: better at low compute, big model from log10 C = 0.75 on, where the curves cross
    pts = [ScalingPoint("small", 1e6, c, 3 - 0.1 * np.log10(c)) for c in (1, 10, 100)]
    pts += [ScalingPoint("big", 1e7, c, 3.075 - 0.2 * np.log10(c)) for c in (1, 10, 100)]
    optimal = compute_optimal_sizes(pts, budgets=5)
    assert [o.shape for o in optimal] == ["small", "small", "big", "big", "big"]
    with pytest.raises(ValueError, match="at least two model shapes"):
        compute_optimal_sizes(pts[:3])


def test_counts_grid_and_makespan():
    assert parse_count("50M") == 50_000_000 and parse_count("2.5k") == 2500 and parse_count("1e6") == 10**6
    with pytest.raises(ValueError, match="not a count"):
        parse_count("lots")
    assert format_count(50_000_000) == "50M"
    sweep = SweepConfig(out_dir="x", hidden=[64, 128], layers=[1, 2], tokens=[1000])
    assert [r.name for r in sweep.runs()] == ["h64-l1-t1k", "h64-l2-t1k", "h128-l1-t1k", "h128-l2-t1k"]
    close = SweepConfig(out_dir="x", hidden=[64], layers=[1], tokens=[12288, 12300, 2_500_000])
    assert [r.name for r in close.runs()] == ["h64-l1-t12288", "h64-l1-t12300", "h64-l1-t2500k"]
    with pytest.raises(ValueError, match="lists a value twice"):
        SweepConfig(out_dir="x", hidden=[64, 64], layers=[1], tokens=[10])
    with pytest.raises(ValueError, match="max_steps=... is set by the sweep"):
        SweepConfig(out_dir="x", hidden=[64], layers=[1], tokens=[10], overrides={"max_steps": "5"})
    with pytest.raises(ValueError, match="hidden must be"):
        SweepConfig(out_dir="x", hidden=[], layers=[1], tokens=[10])
    assert makespan([3, 1, 1, 1], 1) == 6 and makespan([3, 1, 1, 1], 2) == 3 and makespan([2, 2, 2], 4) == 2
