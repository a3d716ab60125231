"""State-of-charge strategies. BmsAverage: the packs' own SoC, weighted by capacity.

- /Soc = sum(SoC_i x C_i) / sum(C_i) over online packs that report both SoC and installed
  capacity C_i. A pack without SoC leaves numerator and denominator alike (the reference kept its
  capacity in the denominator and biased the SoC low, reference §11 item 12). When no pack
  reports a capacity, the plain mean of the SoCs is used; with no SoC at all, /Soc is invalid.
- /Capacity (remaining Ah) = sum of the packs' /Capacity, or SoC_i x C_i / 100 for a pack that
  does not publish it.
- /ConsumedAmphours = sum of the packs' values (<= 0), or Capacity_i - C_i for a pack without
  one; never positive (the reference once had the sign wrong).
- /TimeToGo = 3600 x remaining Ah / discharge current, in whole seconds, only while the bank
  discharges with at least TTG_MIN_CURRENT (serialbattery's threshold); invalid otherwise, since a
  time to empty means nothing at rest or while charging.
"""

from __future__ import annotations

from aggbatt.core.strategies import CurrentResult, SocResult, TickContext

TTG_MIN_CURRENT = 0.1  # A


class BmsAverage:
    name = "bms_average"

    def __init__(self, config: object = None) -> None:
        del config  # nothing to configure

    def estimate(self, ctx: TickContext, current: CurrentResult) -> SocResult:
        packs = ctx.online
        weighted = [(p.soc, p.installed_capacity) for p in packs
                    if p.soc is not None and p.installed_capacity is not None]
        socs = [p.soc for p in packs if p.soc is not None]
        soc: float | None
        if weighted:
            soc = sum(s * c for s, c in weighted) / sum(c for _, c in weighted)
        elif socs:
            soc = sum(socs) / len(socs)
        else:
            soc = None

        remaining: list[float] = []
        consumed: list[float] = []
        for p in packs:
            left = p.capacity
            if left is None and p.soc is not None and p.installed_capacity is not None:
                left = p.soc * p.installed_capacity / 100.0
            if left is not None:
                remaining.append(left)
            if p.consumed_ah is not None:
                consumed.append(p.consumed_ah)
            elif left is not None and p.installed_capacity is not None:
                consumed.append(min(0.0, left - p.installed_capacity))
        capacity = sum(remaining) if remaining else None
        consumed_ah = min(0.0, sum(consumed)) if consumed else None

        time_to_go: int | None = None
        if capacity is not None and current.current is not None and current.current <= -TTG_MIN_CURRENT:
            time_to_go = int(3600.0 * capacity / -current.current)
        return SocResult(soc, capacity, consumed_ah, time_to_go)
