"""matplotlib for the project's PNGs (synthesis stats, grade reports, heat maps, scaling plots): headless,
imported only when a plot is drawn."""

from __future__ import annotations

from types import ModuleType


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
