"""Dynamic CVL: lower the bank CVL while a cell is above max_cell_voltage, then recover slowly.

Rules:

- Error signal, per online pack i (the reference's penalty sum, reference §4):
  OV_i = sum over its cells of max(0, U_k - max_cell_voltage). A pack that publishes only its
  highest cell gives OV_i = max(0, max cell - max_cell_voltage), a lower bound of the sum.
- While any OV_i > 0 the pack asks for cap_i = S_i - gain x OV_i, with S_i the pack's own cell sum
  (/Voltages/Sum, else its /Dc/0/Voltage, else the target). Only packs with an over-voltage ask, so a
  healthy low pack does not drag the CVL down to its present voltage (the reference's min over all
  packs stopped charging outright, 3.11 item 4).
- Lowering is immediate: limit = min(limit, min_i cap_i), never below `floor` (the bank's empty
  voltage). While any cell is over, the limit never rises.
- Once no cell is over, the limit is held for hold_time seconds after the last over-voltage, then
  rises by at most recovery_rate V/s (bank volts) until it reaches the target; there the controller
  is idle again. A cell that peaks again during hold or ramp lowers the limit from where it is,
  so the CVL steps down quickly and creeps up slowly instead of the reference's 1 s sawtooth.
- The result is min(target, limit). `active` (the limit is below the target, including hold and
  ramp) is the "CVL reduced for an over-voltage cell" condition of the feed-in guard.
- Because cap_i uses the present measured sum, repeated ticks with unchanged readings give the same
  cap: the law is proportional, not an integrator, so the tick rate does not change its strength.
- Missing data is not a recovery: while a pack that was over in the present episode is absent
  from `packs` (offline) or has no valid cell reading, the limit is held as if that pack were still
  over. It is dropped from the episode only when it is no longer known at all (`known`).

Nothing here is persisted: after a restart a cell that is still over lowers the CVL on the first
tick.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from aggbatt.core.snapshot import PackSnapshot


@dataclass(frozen=True)
class DynamicParams:
    max_cell_voltage: float  # V per cell
    hold_time: float  # s
    recovery_rate: float  # V/s of bank CVL
    gain: float  # V of CVL per V of cell over-voltage


@dataclass(frozen=True)
class DynamicResult:
    cvl: float
    active: bool  # CVL is below the target because of an over-voltage cell (now or recently)
    reason: str | None  # why the CVL is lowered; None when inactive
    over_pack: str | None  # pack with the over-voltage that set the present limit


def overvoltage(pack: PackSnapshot, max_cell_voltage: float) -> float:
    """Sum of the pack's cell voltages above max_cell_voltage (V)."""
    from_cells = sum(max(0.0, u - max_cell_voltage) for u in pack.cell_voltages.values()
                     if isinstance(u, float) and math.isfinite(u))
    highest = highest_cell(pack)
    from_max = max(0.0, highest - max_cell_voltage) if highest is not None else 0.0
    return max(from_cells, from_max)


def highest_cell(pack: PackSnapshot) -> float | None:
    """The pack's highest cell voltage from /System/MaxCellVoltage or its cell list."""
    known = [u for u in pack.cell_voltages.values() if isinstance(u, float) and math.isfinite(u)]
    if pack.max_cell_voltage is not None:
        known.append(pack.max_cell_voltage)
    return max(known) if known else None


def _reference(pack: PackSnapshot, target: float) -> float:
    if pack.voltages_sum is not None:
        return pack.voltages_sum
    if pack.voltage is not None:
        return pack.voltage
    return target


class DynamicCvl:
    def __init__(self, params: DynamicParams) -> None:
        self.params = params
        self.limit: float | None = None  # None = idle
        self._last_over: float | None = None
        self._last_now: float | None = None
        self._over_pack: str | None = None
        self._over_text: str | None = None
        self._over_ids: dict[str, str] = {}  # packs over in the present episode: id -> name

    def update(self, now: float, target: float, packs: Sequence[PackSnapshot],
               floor: float, known: Collection[str] | None = None) -> DynamicResult:
        """`known`: every known pack id, online or not (None: keep every pack of the episode)."""
        p = self.params
        previous = self._last_now
        self._last_now = now
        asks: list[tuple[float, PackSnapshot, float]] = []
        for pack in packs:
            over = overvoltage(pack, p.max_cell_voltage)
            if over > 0.0:
                asks.append((_reference(pack, target) - p.gain * over, pack, over))

        if asks:
            cap, pack, over = min(asks, key=lambda ask: ask[0])
            current = self.limit if self.limit is not None else target
            lowered = max(floor, min(current, cap, target))
            if self.limit is None or lowered < self.limit:
                self._over_pack = pack.name
            self.limit = lowered
            self._last_over = now
            self._over_ids.update({ask[1].id: ask[1].name for ask in asks})
            self._over_text = (f"{pack.name} cell {highest_cell(pack) or 0.0:.3f} V "
                               f"over {p.max_cell_voltage:.3f} V")
            return DynamicResult(min(target, self.limit), True,
                                 f"{self._over_text}: CVL lowered", self._over_pack)

        if self.limit is None:
            return DynamicResult(target, False, None, None)

        if known is not None:
            self._over_ids = {pid: name for pid, name in self._over_ids.items() if pid in known}
        readable = {pack.id for pack in packs if highest_cell(pack) is not None}
        unread = [name for pid, name in self._over_ids.items() if pid not in readable]
        if unread:
            self._last_over = now
            return DynamicResult(min(target, self.limit), True,
                                 f"{self._over_text}: lowered CVL held, no cell reading from "
                                 f"{', '.join(unread)}", self._over_pack)

        assert self._last_over is not None
        hold_end = self._last_over + p.hold_time
        if now < hold_end:
            return DynamicResult(min(target, self.limit), True,
                                 f"{self._over_text}: lowered CVL held", self._over_pack)
        ramp_from = max(hold_end, previous if previous is not None else hold_end)
        self.limit += p.recovery_rate * max(0.0, now - ramp_from)
        if self.limit >= target:
            self.limit = None
            self._over_pack = self._over_text = None
            self._over_ids.clear()
            return DynamicResult(target, False, None, None)
        return DynamicResult(self.limit, True,
                             f"{self._over_text}: CVL recovering", self._over_pack)
