"""Bank current sources. BmsSum: the sum of the online packs' own current measurements.

Power is the sum of the packs' /Dc/0/Power; a pack without a valid power value contributes its own
V x I instead, so one pack's missing power path does not make the bank power wrong or invalid.
With no pack online both are invalid.
"""

from __future__ import annotations

from aggbatt.core.strategies import CurrentResult, TickContext


class BmsSum:
    name = "bms_sum"

    def __init__(self, config: object = None) -> None:
        del config  # nothing to configure

    def measure(self, ctx: TickContext) -> CurrentResult:
        currents = [p.current for p in ctx.online if p.current is not None]
        if not currents:
            return CurrentResult(None, None, self.name)
        powers: list[float] = []
        for pack in ctx.online:
            if pack.power is not None:
                powers.append(pack.power)
            elif pack.voltage is not None and pack.current is not None:
                powers.append(pack.voltage * pack.current)
        return CurrentResult(sum(currents), sum(powers) if powers else None, self.name)
