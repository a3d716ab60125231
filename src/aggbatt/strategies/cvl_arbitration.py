"""Pass-through CVL arbitration: "min" and the stateful "absorption_hold".

Why: with cvl_mode "min" a pack that reaches float first pulls the whole bank down to its float
voltage, so the other packs never finish absorption, balancing or their SoC reset (field-survey
2.5, 3.9; DAB issue 169). The reference's KEEP_MAX_CVL jumps to the maximum as soon as one pack
floats, which also overrides a pack that lowers its CVL to protect a high cell (3.11 item 10).

Rules of "absorption_hold" (field-survey section 4 item 5):

- Each online pack is classed from its /Info/ChargeMode text: FLOAT when it contains "float"
  (serialbattery's "Float", "Float Transition", "Float | Linear Mode"), UNKNOWN when the text is
  missing (a CAN BMS, a driver still starting), CHARGING otherwise (bulk, absorption, balancing,
  SoC reset, "Keep always max voltage").
- While any pack is CHARGING, the bank follows the highest CVL among the CHARGING packs: the bank
  stays in absorption until every pack has finished. When none is CHARGING, the bank follows the
  lowest CVL of all packs (into float).
- A pack lowering its CVL always wins: per pack the highest CVL seen since it entered its present
  class is remembered; a pack whose CVL is more than `drop` volts below that is reducing (cell
  over-voltage protection, a recovery ramp) and caps the bank CVL, whatever its class.
- An UNKNOWN pack caps the bank CVL with its own CVL (no class, no hold: "min" for that pack).
- The memory is per pack id and dropped when a pack leaves the online set. Nothing is persisted: a
  restart starts from the present CVLs; a pack that is already reducing then still caps the bank
  through "min" once everyone floats, and its next reduction is seen.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from aggbatt.model import PackSnapshot

CVL_DROP = 0.01  # V below the pack's remembered CVL that counts as "lowering"


class PackClass(enum.Enum):
    CHARGING = "charging"
    FLOAT = "float"
    UNKNOWN = "unknown"


def classify(charge_mode: str | None) -> PackClass:
    if not isinstance(charge_mode, str) or not charge_mode.strip():
        return PackClass.UNKNOWN
    return PackClass.FLOAT if "float" in charge_mode.lower() else PackClass.CHARGING


@dataclass(frozen=True)
class Arbitration:
    cvl: float | None  # None when no online pack has a CVL
    reason: str  # for status / /Info/ChargeMode


def min_cvl(packs: Sequence[PackSnapshot]) -> Arbitration:
    with_cvl = [p for p in packs if p.cvl is not None]
    if not with_cvl:
        return Arbitration(None, "no pack CVL")
    low = min(with_cvl, key=lambda p: p.cvl or 0.0)
    return Arbitration(low.cvl, f"lowest pack CVL ({low.name})")


class AbsorptionHold:
    def __init__(self, drop: float = CVL_DROP) -> None:
        self.drop = drop
        self._memory: dict[str, tuple[PackClass, float]] = {}

    def arbitrate(self, packs: Sequence[PackSnapshot]) -> Arbitration:
        with_cvl = [p for p in packs if p.cvl is not None]
        self._memory = {pid: mem for pid, mem in self._memory.items()
                        if any(p.id == pid for p in with_cvl)}
        if not with_cvl:
            return Arbitration(None, "no pack CVL")

        classes: dict[str, PackClass] = {}
        reducing: list[PackSnapshot] = []
        for pack in with_cvl:
            cls = classify(pack.charge_mode)
            classes[pack.id] = cls
            cvl = pack.cvl or 0.0
            remembered = self._memory.get(pack.id)
            if remembered is None or remembered[0] is not cls:
                self._memory[pack.id] = (cls, cvl)
            else:
                peak = max(remembered[1], cvl)
                self._memory[pack.id] = (cls, peak)
                if cvl < peak - self.drop:
                    reducing.append(pack)

        charging = [p for p in with_cvl if classes[p.id] is PackClass.CHARGING]
        if charging:
            lead = max(charging, key=lambda p: p.cvl or 0.0)
            cvl, reason = lead.cvl or 0.0, f"absorption hold: {lead.name} still charging"
        else:
            low = min(with_cvl, key=lambda p: p.cvl or 0.0)
            cvl, reason = low.cvl or 0.0, f"all packs in float: lowest pack CVL ({low.name})"

        caps = [(p, f"{p.name} lowers its CVL") for p in reducing]
        caps += [(p, f"{p.name} reports no charge mode") for p in with_cvl
                 if classes[p.id] is PackClass.UNKNOWN]
        for pack, why in caps:
            if (pack.cvl or 0.0) < cvl:
                cvl, reason = pack.cvl or 0.0, why
        return Arbitration(cvl, reason)
