"""What the aggregate publishes for its own GX page: one subtree per pack and the bank's decisions.

Pure: pack statuses and strategy facts in, a path -> value dict out.

Why as plain D-Bus paths: the GX screen, MQTT, VRM and Node-RED all read the aggregate's paths, so
anything published here reaches every one of them, and the screen page needs nothing else.

Per-pack subtree: /Packs/Count, then /Packs/<n>/... for n = 0 .. Count-1, the packs in the order the
engine keeps them (by id, so a pack keeps its slot while the set of packs stays the same). At most
MAX_PACKS slots: a bank never has that many packs in parallel, and a consumer must know the paths
are bounded. A slot that was used once stays on the bus: when its pack is forgotten the slot's values
turn invalid instead of freezing at the pack's last readings.

Readings that move every second (data age, V, A, SoC) are refreshed at most every
READING_INTERVAL seconds per pack, and at once when the pack's state changes: each changed path
is one signal per consumer, and 1 Hz readings of every pack would multiply the aggregate's traffic
for a page that a person reads. State, reason, limits and blocking go out the tick they change.

Bank decisions (/Aggbatt/...): the current source in use, the SoC and charge strategies, the
balancing record (own charge only) and the feed-in guard's state. Invalid where they do not apply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the engine imports this module; the type is only for the checker
    from aggbatt.core.engine import PackStatus

MAX_PACKS = 32
READING_INTERVAL = 5.0  # s
READING_LEAVES = ("DataAge", "Dc/0/Voltage", "Dc/0/Current", "Soc")
PACKS_COUNT = "/Packs/Count"

# Leaves under /Packs/<n>/; the types are declared in aggbatt.daemon.paths.
PACK_LEAVES = (
    "Id", "Name", "Service", "State", "Reason", "DataAge", "Dc/0/Voltage", "Dc/0/Current", "Soc",
    "Info/MaxChargeVoltage", "Info/MaxChargeCurrent", "Info/MaxDischargeCurrent",
    "BlockingCharge", "BlockingDischarge", "BlockingReason", "Holds",
)

CURRENT_SOURCE = "/Aggbatt/CurrentSource"
SOC_STRATEGY = "/Aggbatt/SocStrategy"
CHARGE_STRATEGY = "/Aggbatt/ChargeStrategy"
BALANCING_PHASE = "/Aggbatt/Balancing/Phase"
BALANCING_LAST = "/Aggbatt/Balancing/Last"
BALANCING_NEXT = "/Aggbatt/Balancing/NextDue"
FEEDIN_GUARD = "/Aggbatt/FeedInGuard"
INFO_PATHS = (CURRENT_SOURCE, SOC_STRATEGY, CHARGE_STRATEGY, BALANCING_PHASE, BALANCING_LAST,
              BALANCING_NEXT, FEEDIN_GUARD)


def pack_path(slot: int, leaf: str) -> str:
    return f"/Packs/{slot}/{leaf}"


def _flag(reason: str | None, known: bool) -> int | None:
    if not known:
        return None
    return 1 if reason is not None else 0


def _slot_values(slot: int, pack: PackStatus) -> dict[str, Any]:
    known = pack.service is not None  # a missing pack has no readings to judge
    reasons = [f"{what}: {why}" for what, why in (("charge", pack.blocking_charge),
                                                  ("discharge", pack.blocking_discharge)) if why]
    values = (
        pack.id, pack.name, pack.service, pack.state, pack.reason,
        None if pack.age is None else round(pack.age), pack.voltage, pack.current, pack.soc,
        pack.cvl, pack.ccl, pack.dcl,
        _flag(pack.blocking_charge, known), _flag(pack.blocking_discharge, known),
        "; ".join(reasons) if known else None, pack.holds,
    )
    return {pack_path(slot, leaf): value for leaf, value in zip(PACK_LEAVES, values, strict=True)}


@dataclass
class _Held:
    """The readings last sent for one slot, and for which pack in which state."""

    pack: str
    state: str
    since: float
    readings: dict[str, Any]


class PackPages:
    """Builds the /Packs subtree; remembers how many slots were ever published and, per slot, the
    readings last sent (module header)."""

    def __init__(self) -> None:
        self._slots = 0
        self._held: dict[int, _Held] = {}

    def values(self, packs: Sequence[PackStatus], now: float) -> dict[str, Any]:
        """`now`: monotonic seconds."""
        shown = packs[:MAX_PACKS]
        out: dict[str, Any] = {PACKS_COUNT: len(shown)}
        for slot, pack in enumerate(shown):
            values = _slot_values(slot, pack)
            held = self._held.get(slot)
            if (held is not None and held.pack == pack.id and held.state == pack.state
                    and now - held.since < READING_INTERVAL):
                values.update(held.readings)
            else:
                readings = {pack_path(slot, leaf): values[pack_path(slot, leaf)]
                            for leaf in READING_LEAVES}
                self._held[slot] = _Held(pack.id, pack.state, now, readings)
            out.update(values)
        for slot in range(len(shown), self._slots):
            out.update({pack_path(slot, leaf): None for leaf in PACK_LEAVES})
            self._held.pop(slot, None)
        self._slots = max(self._slots, len(shown))
        return out

    def cleared(self) -> dict[str, Any]:
        """No pack known (the tick failed): every slot ever published turns invalid."""
        return self.values((), 0.0)


def info_values(*, current_source: str | None, soc_strategy: str, charge_strategy: str,
                balancing: Mapping[str, Any] | None, next_due: date | None,
                feedin_guard: str | None) -> dict[str, Any]:
    """`balancing`: the balancing record as saved (BalancingRecord.to_json), None without own
    charge; `feedin_guard`: the guard's mode, "off" when disabled, None without own charge."""
    phase = last = due = None
    if balancing is not None:
        phase = balancing.get("phase")
        last = balancing.get("last_balancing") or "never"
        due = next_due.isoformat() if next_due is not None else None
    return {
        CURRENT_SOURCE: current_source, SOC_STRATEGY: soc_strategy,
        CHARGE_STRATEGY: charge_strategy, BALANCING_PHASE: phase, BALANCING_LAST: last,
        BALANCING_NEXT: due, FEEDIN_GUARD: feedin_guard,
    }
