"""Own CCL/DCL: piecewise-linear tables over the extreme cell voltages, with a DCL cut-off latch.

Rules (docs/reference-aggregator.md §6, with the defects of §11 items 8 and 15 addressed):

- CCL = max_charge_current x f_c(highest cell voltage of the bank); DCL = max_discharge_current x
  f_d(lowest cell voltage). f is linear between the knots and flat outside them (the first or last
  factor), so a reading outside the table never extrapolates.
- Any online pack that blocks charging (its CCL 0, AllowToCharge 0 or a blocking count) makes CCL 0
  at once; the same for discharging. The caller passes the blocking pack's name as the reason.
- Both limits are then capped by the pass-through per-pack-share limits of the packs themselves
  (the engine's cap), so a pack's own temperature, SoC or MOSFET derating still counts; the
  reference ignored them (3.11 item 8).
- DCL latch: after the lowest cell has been at or below min_cell_voltage, DCL stays 0 until that
  cell is above min_cell_voltage + min_cell_hysteresis. On the first reading after a start the
  latch is engaged if the cell is anywhere at or below that release voltage: the daemon cannot know
  whether a cut-off happened before the restart, and an almost empty bank is the side to err on.
- Without any cell voltage (no online pack publishes them) the tables cannot apply; the caps alone
  then set the limits and the reason says so.
- Missing data never releases the cut-off: while a pack's lowest cell is unknown (its readings are
  invalid, or a pack that was low is offline; the caller names it in `missing`), a CUT latch stays
  CUT and DCL stays 0, and the latch takes no step other than towards CUT. The lowest reading of the
  other packs says nothing about the pack that cannot be read.

Latch transitions (v = lowest cell voltage, low = min_cell_voltage, high = low + hysteresis):

    state \\ reading | v <= low | low < v <= high | v > high
    ----------------+----------+-----------------+---------
    UNKNOWN         | CUT      | CUT             | OPEN
    OPEN            | CUT      | OPEN            | OPEN
    CUT             | CUT      | CUT             | OPEN
"""

from __future__ import annotations

import enum
import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise


@dataclass(frozen=True)
class Table:
    """f(x): linear between (knots[i], factors[i]), flat outside; knots strictly increasing."""

    knots: tuple[float, ...]
    factors: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.knots) < 2 or len(self.knots) != len(self.factors):
            raise ValueError("a table needs at least 2 knots and one factor per knot")
        if any(not math.isfinite(v) for v in (*self.knots, *self.factors)):
            raise ValueError("table values must be finite")
        if any(b <= a for a, b in pairwise(self.knots)):
            raise ValueError("table knots must increase strictly")

    @classmethod
    def of(cls, knots: Sequence[float], factors: Sequence[float]) -> Table:
        return cls(tuple(float(k) for k in knots), tuple(float(f) for f in factors))

    def __call__(self, x: float) -> float:
        knots, factors = self.knots, self.factors
        if x <= knots[0]:
            return factors[0]
        if x >= knots[-1]:
            return factors[-1]
        i = bisect_right(knots, x) - 1
        return factors[i] + (factors[i + 1] - factors[i]) * (x - knots[i]) / (knots[i + 1] - knots[i])

    @property
    def highest(self) -> float:
        return max(self.factors)


class Latch(enum.Enum):
    UNKNOWN = "unknown"
    OPEN = "open"
    CUT = "cut"


class Band(enum.Enum):
    LOW = "at or below the cut-off"
    BETWEEN = "inside the hysteresis"
    HIGH = "above the release voltage"


LATCH_TRANSITIONS: dict[tuple[Latch, Band], Latch] = {
    (Latch.UNKNOWN, Band.LOW): Latch.CUT,
    (Latch.UNKNOWN, Band.BETWEEN): Latch.CUT,
    (Latch.UNKNOWN, Band.HIGH): Latch.OPEN,
    (Latch.OPEN, Band.LOW): Latch.CUT,
    (Latch.OPEN, Band.BETWEEN): Latch.OPEN,
    (Latch.OPEN, Band.HIGH): Latch.OPEN,
    (Latch.CUT, Band.LOW): Latch.CUT,
    (Latch.CUT, Band.BETWEEN): Latch.CUT,
    (Latch.CUT, Band.HIGH): Latch.OPEN,
}


@dataclass(frozen=True)
class TableParams:
    max_charge_current: float
    max_discharge_current: float
    charge: Table  # over the highest cell voltage
    discharge: Table  # over the lowest cell voltage
    min_cell_voltage: float
    min_cell_hysteresis: float


@dataclass(frozen=True)
class Limit:
    """One current limit (A) and the rule that sets it, as published in /Info/*Limitation."""

    value: float
    reason: str
    source: str = ""  # stable key of the rule (no numbers): table, cut_off, block, ... or the cap's


@dataclass(frozen=True)
class TableInputs:
    max_cell: float | None  # highest cell voltage of the online packs
    min_cell: float | None  # lowest cell voltage of the online packs
    charge_blocked_by: str | None  # name of a pack that blocks charging, else None
    discharge_blocked_by: str | None
    charge_cap: Limit  # the pass-through per-pack-share CCL of the online packs
    discharge_cap: Limit
    # Why the bank's lowest cell is not fully known (a pack without valid cell readings, a low pack
    # offline), else None; `min_cell` then covers only the packs that can be read.
    missing: str | None = None


class CurrentTables:
    """CCL/DCL from the tables; owns the DCL latch (not persisted, see the header)."""

    def __init__(self, params: TableParams) -> None:
        self.params = params
        self.latch = Latch.UNKNOWN

    def _band(self, min_cell: float) -> Band:
        low = self.params.min_cell_voltage
        if min_cell <= low:
            return Band.LOW
        if min_cell <= low + self.params.min_cell_hysteresis:
            return Band.BETWEEN
        return Band.HIGH

    def update(self, inputs: TableInputs) -> tuple[Limit, Limit]:
        """(CCL, DCL) for this tick; moves the latch."""
        p = self.params
        if inputs.min_cell is not None:
            latch = LATCH_TRANSITIONS[(self.latch, self._band(inputs.min_cell))]
            if inputs.missing is None or latch is Latch.CUT:
                self.latch = latch

        if inputs.charge_blocked_by is not None:
            ccl = Limit(0.0, f"{inputs.charge_blocked_by} blocks charging", "block")
        elif inputs.max_cell is None:
            ccl = Limit(math.inf, "no cell voltages: table not applied", "no_cells")
        else:
            factor = p.charge(inputs.max_cell)
            ccl = Limit(p.max_charge_current * factor, _table_reason(
                "max cell", inputs.max_cell, factor, p.charge.highest), "table")

        release = p.min_cell_voltage + p.min_cell_hysteresis
        if inputs.discharge_blocked_by is not None:
            dcl = Limit(0.0, f"{inputs.discharge_blocked_by} blocks discharging", "block")
        elif self.latch is Latch.CUT and (inputs.min_cell is None or inputs.missing is not None):
            unknown = inputs.missing or "no valid cell voltages"
            dcl = Limit(0.0, f"cut off until above {release:.3f} V, kept: {unknown}", "cut_off")
        elif inputs.min_cell is None:
            dcl = Limit(math.inf, "no cell voltages: table not applied", "no_cells")
        elif self.latch is Latch.CUT:
            dcl = Limit(0.0, f"min cell {inputs.min_cell:.3f} V: cut off until above {release:.3f} V",
                        "cut_off")
        else:
            factor = p.discharge(inputs.min_cell)
            dcl = Limit(p.max_discharge_current * factor, _table_reason(
                "min cell", inputs.min_cell, factor, p.discharge.highest), "table")

        return _capped(ccl, inputs.charge_cap), _capped(dcl, inputs.discharge_cap)


def _table_reason(label: str, volts: float, factor: float, highest: float) -> str:
    if factor >= highest:
        return f"{label} {volts:.3f} V: table maximum"
    return f"{label} {volts:.3f} V: table {factor * 100:.0f} %"


def _capped(own: Limit, cap: Limit) -> Limit:
    """The lower of the two; the cap's reason wins a tie only when it is strictly lower."""
    value = cap.value if math.isfinite(cap.value) else math.inf
    if value < own.value:
        return Limit(max(0.0, value), cap.reason, cap.source)
    return Limit(max(0.0, own.value), own.reason, own.source)
