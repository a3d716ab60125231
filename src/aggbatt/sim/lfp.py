"""Open-circuit voltage curves for simulated cells.

A curve maps a state of charge fraction (0.0-1.0) to the resting voltage of one cell. The simulator
takes any such callable, so another chemistry is a different table, not different code.

The LFP table follows the usual published shape: a steep knee below 10 %, a flat plateau around
3.3 V that makes voltage useless as a SoC gauge in the middle, and a steep rise above 95 % where
cells drift apart and balancing matters.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import pairwise

OcvCurve = Callable[[float], float]

LFP_TABLE: tuple[tuple[float, float], ...] = (
    (0.00, 2.50),
    (0.02, 2.90),
    (0.05, 3.05),
    (0.10, 3.20),
    (0.20, 3.25),
    (0.30, 3.27),
    (0.40, 3.285),
    (0.50, 3.29),
    (0.60, 3.295),
    (0.70, 3.30),
    (0.80, 3.31),
    (0.90, 3.33),
    (0.95, 3.35),
    (0.98, 3.40),
    (1.00, 3.55),
)


def piecewise_linear(table: Sequence[tuple[float, float]]) -> Callable[[float], float]:
    """Linear interpolation in a sorted (x, y) table, clamped to the first and last y."""
    if len(table) < 2:
        raise ValueError("a curve needs at least two points")
    xs = [x for x, _ in table]
    ys = [y for _, y in table]
    if any(b <= a for a, b in pairwise(xs)):
        raise ValueError("curve x values must increase strictly")

    def curve(x: float) -> float:
        if x <= xs[0]:
            return ys[0]
        if x >= xs[-1]:
            return ys[-1]
        i = bisect_right(xs, x) - 1
        span = xs[i + 1] - xs[i]
        return ys[i] + (ys[i + 1] - ys[i]) * (x - xs[i]) / span

    return curve


ocv: OcvCurve = piecewise_linear(LFP_TABLE)
"""LFP cell voltage at rest for a SoC fraction (0.0-1.0)."""
