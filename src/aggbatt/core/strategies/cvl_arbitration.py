"""Pass-through CVL arbitration: "min" and the stateful "absorption_hold".

Why: with cvl_mode "min" a pack that reaches float first pulls the whole bank down to its float
voltage, so the other packs never finish absorption, balancing or their SoC reset (reference
§12 item 5, §9). The reference's KEEP_MAX_CVL jumps to the maximum as soon as one pack
floats, which also overrides a pack that lowers its CVL to protect a high cell (3.11 item 10).

Rules of "absorption_hold" (reference §13):

- Each online pack is classed from its /Info/ChargeMode text: TRANSITION when it contains "float"
  and "transition" (serialbattery's "Float Transition": its CVL ramps down slowly from absorption
  to float), FLOAT for any other text with "float" ("Float", "Float | Linear Mode"), UNKNOWN when
  the text is missing (a CAN BMS, a driver still starting, an invalid reading), CHARGING otherwise
  (bulk, absorption, balancing, SoC reset, "Keep always max voltage").
- While any pack is CHARGING the bank stays in absorption; when none is, the bank follows the
  lowest CVL of all packs (into float).
- The hold compares per cell, so packs with different cell counts are each held at the same cell
  voltage and never above it: the lead is the CHARGING pack with the highest CVL per cell, and
  every pack allows its own cell count times that voltage; the bank takes the lowest. (In bank
  volts a 16-cell pack at 3.55 V per cell would hold a 15-cell pack at 3.79 V per cell.) A cell
  count is used only when the pack's voltage (/Voltages/Sum, else /Dc/0/Voltage) divided by it
  lies within the pack's own lowest and highest cell reading. When any classed pack has no such
  count the hold cannot compare per cell, and no pack is given more than its own CVL: a CHARGING
  pack allows its present CVL, a FLOAT or TRANSITION pack the CVL it last asked for while CHARGING.
- A pack lowering its CVL protects a high cell and always caps the bank: per pack the highest CVL
  since it entered CHARGING or FLOAT is remembered, and a CVL more than `drop` volts below it caps
  the bank. The ramp of a TRANSITION pack is its way into float, not a protection: it holds
  nothing down. An UNKNOWN pack caps with its present CVL (no class, no hold).
- A pack whose present phase was not seen from its start caps with its present CVL until its next
  phase change: after a restart, or when it changed phase while offline or without a charge mode,
  nothing shows whether its CVL is already lowered, and neither may raise the bank CVL. So does a
  FLOAT or TRANSITION pack never seen CHARGING in this process: its own charge CVL is unknown.
- The memory is per pack id and survives the pack leaving the online set (an invalid reading, a
  link loss, a re-admission) and an UNKNOWN tick: a reduction seen before still counts when the
  pack is back. It is dropped only when the pack is no longer known at all (forgotten). Nothing is
  persisted.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from aggbatt.core.snapshot import PackSnapshot

CVL_DROP = 0.01  # V below the pack's remembered CVL that counts as "lowering"


class PackClass(enum.Enum):
    CHARGING = "charging"
    TRANSITION = "transition"
    FLOAT = "float"
    UNKNOWN = "unknown"


def classify(charge_mode: str | None) -> PackClass:
    if not isinstance(charge_mode, str) or not charge_mode.strip():
        return PackClass.UNKNOWN
    text = charge_mode.lower()
    if "float" not in text:
        return PackClass.CHARGING
    return PackClass.TRANSITION if "transition" in text else PackClass.FLOAT


@dataclass(frozen=True)
class Arbitration:
    cvl: float | None  # None when no online pack has a CVL
    reason: str  # for status / /Info/ChargeMode
    source: str = ""  # stable key of the rule that sets it (no numbers): a change is logged


# (bank CVL a rule allows, why, its stable key)
_Rule = tuple[float, str, str]


def min_cvl(packs: Sequence[PackSnapshot]) -> Arbitration:
    with_cvl = [p for p in packs if p.cvl is not None]
    if not with_cvl:
        return Arbitration(None, "no pack CVL")
    low = min(with_cvl, key=lambda p: p.cvl or 0.0)
    return Arbitration(low.cvl, f"lowest pack CVL ({low.name})")


# V: a cell count fits when the pack voltage divided by it lies within the cell readings this much
# (cable drop between cells and terminals, readings taken at other moments).
CELL_READING_SLACK = 0.05


def cells_per_pack(pack: PackSnapshot) -> int | None:
    """The pack's cell count when its voltage agrees with it, else None."""
    n = pack.cells or len(pack.cell_voltages)
    volts = pack.voltages_sum if pack.voltages_sum is not None else pack.voltage
    low, high = pack.min_cell_voltage, pack.max_cell_voltage
    if not n or volts is None or low is None or high is None:
        return None
    mean = volts / n
    return n if low - CELL_READING_SLACK <= mean <= high + CELL_READING_SLACK else None


@dataclass
class _Memory:
    cls: PackClass | None = None  # its last known class (UNKNOWN is never stored)
    peak: float | None = None  # its highest CVL since it entered CHARGING or FLOAT
    charge_cvl: float | None = None  # the CVL it last asked for while CHARGING
    entered: bool = False  # its present phase was seen from its start
    gap: bool = False  # not seen classed at the last arbitration (offline, UNKNOWN)


class AbsorptionHold:
    def __init__(self, drop: float = CVL_DROP) -> None:
        self.drop = drop
        self._memory: dict[str, _Memory] = {}

    def arbitrate(self, packs: Sequence[PackSnapshot],
                  known: Collection[str] | None = None) -> Arbitration:
        """`packs`: the online packs; `known`: every known pack id, online or not (None: keep the
        memory of every pack seen)."""
        if known is not None:
            self._memory = {pid: mem for pid, mem in self._memory.items() if pid in known}
        with_cvl = [p for p in packs if p.cvl is not None]
        if not with_cvl:
            return Arbitration(None, "no pack CVL", "none")

        classes = {p.id: classify(p.charge_mode) for p in with_cvl}
        for pid, mem in self._memory.items():
            if classes.get(pid, PackClass.UNKNOWN) is PackClass.UNKNOWN:
                mem.gap = True
        caps = [cap for p in with_cvl if (cap := self._protect(p, classes[p.id])) is not None]
        charging = [p for p in with_cvl if classes[p.id] is PackClass.CHARGING]
        if charging:
            cvl, reason, source = self._hold(with_cvl, classes, charging)
        else:
            low = min(with_cvl, key=lambda p: p.cvl or 0.0)
            cvl, reason, source = (low.cvl or 0.0, f"all packs in float: lowest pack CVL ({low.name})",
                                   "float")
        for value, why, key in caps:
            # A protection is named even when the hold gives the same value: it is the news.
            if value < cvl or (value == cvl and key.startswith("lowers:")):
                cvl, reason, source = value, why, key
        return Arbitration(cvl, reason, source)

    def _hold(self, packs: Sequence[PackSnapshot], classes: dict[str, PackClass],
              charging: Sequence[PackSnapshot]) -> _Rule:
        """The absorption hold before the protective caps, and why."""
        classed = [p for p in packs if classes[p.id] is not PackClass.UNKNOWN]
        counts = {p.id: cells_per_pack(p) for p in classed}
        if all(n is not None for n in counts.values()):
            lead = max(charging, key=lambda p: (p.cvl or 0.0) / (counts[p.id] or 1))
            per_cell = (lead.cvl or 0.0) / (counts[lead.id] or 1)
            low = min(classed, key=lambda p: counts[p.id] or 0)
            return ((counts[low.id] or 0) * per_cell,
                    f"absorption hold: {lead.name} still charging, {per_cell:.3f} V per cell",
                    "hold")
        lead = max(charging, key=lambda p: p.cvl or 0.0)
        cvl, reason, source = lead.cvl or 0.0, f"absorption hold: {lead.name} still charging", "hold"
        for pack in classed:
            mem = self._memory[pack.id]
            own = pack.cvl if classes[pack.id] is PackClass.CHARGING else mem.charge_cvl
            if own is not None and own < cvl:
                cvl, reason, source = own, (f"absorption hold: {pack.name}'s own charge CVL "
                                            "(cell counts unknown, no per-cell comparison)"), \
                    f"own_cvl:{pack.id}"
        return cvl, reason, source

    def _protect(self, pack: PackSnapshot, cls: PackClass) -> _Rule | None:
        """The pack's protective cap on the bank CVL, if any; moves its memory."""
        cvl = pack.cvl or 0.0
        mem = self._memory.setdefault(pack.id, _Memory())
        if cls is PackClass.UNKNOWN:
            return cvl, f"{pack.name} reports no charge mode", f"no_mode:{pack.id}"
        before, mem.cls = mem.cls, cls
        if before is not cls:
            mem.entered = before is not None and not mem.gap
        mem.gap = False
        if cls is PackClass.TRANSITION:
            mem.peak = None
        else:
            mem.peak = cvl if before is not cls or mem.peak is None else max(mem.peak, cvl)
            if cls is PackClass.CHARGING:
                mem.charge_cvl = cvl
            if cvl < mem.peak - self.drop:
                return cvl, f"{pack.name} lowers its CVL", f"lowers:{pack.id}"
        if not mem.entered:
            return (cvl, f"{pack.name}: {cls.value} phase not seen from its start, its own CVL caps",
                    f"unseen:{pack.id}")
        if cls is not PackClass.CHARGING and mem.charge_cvl is None:
            return (cvl, f"{pack.name} in float, not seen charging since the start",
                    f"never_charged:{pack.id}")
        return None
