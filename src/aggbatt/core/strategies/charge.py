"""Charge limits: the per-pack-share cap, the safety envelope, and PassthroughCharge.

Per-pack-share cap (reference §12 item 4, §11 item 7; docs/safety.md §1)
-------------------------------------------------------------------------
In a parallel bank pack i carries a share s_i of the bank current. The bank limit L keeps every
online pack within its own limit when s_i x L <= limit_i for all i, so

    L = min_i limit_i / s_i,      s_i = max(measured share, capacity share)

- capacity share: C_i / sum of the installed capacities of the online packs that report one. A pack
  with unknown capacity could be the largest, so its capacity share is taken as 1 (conservative),
  and it adds nothing to the others' denominator (which only makes their shares larger).
- measured share: I_i / I_bank in the direction considered (charge: I > 0, discharge: I < 0),
  floored at 0, where I_bank is the sum of the online packs' currents. It is used only while
  |I_bank| in that direction is at least `measurable_current(config)`; below that the ratio is
  noise. It may exceed 1 when current circulates between packs, which is what the pack then
  really carries. The max of both shares is used because the present split (internal resistance,
  SoC differences) and the long-run split (capacity) can each be the worse one; min x N is only
  right for identical packs.
- remembered share: below the measurable current (rest, the first tick after a reversal) the
  present split cannot be measured, yet the packs' internal resistances still split the current
  the same way when it starts again. Dropping the measured share there would give a pack that
  really takes 80 % a capacity share of, say, 50 % for the first tick of charging: 80 A against
  its own 50 A. So the engine keeps each pack's last measured share per direction
  (`ShareMemory`) and uses it, fading from the measured value towards the capacity share with a
  half-life of `SHARE_HALF_LIFE` (the split drifts only slowly with SoC and temperature).
Every share is > 0, so L is always defined: installed capacity is validated >= 1 Ah, and a
capacity share that still comes out as 0 or not finite (extreme values in a snapshot built
elsewhere) counts as unknown, i.e. 1.

Safety envelope (applied by the engine to every charge strategy's result), per direction:
1. no pack online -> CVL, CCL and DCL invalid, so Venus applies its own "BMS lost" handling
   (victron-contract §4.6) instead of stale limits;
2. any pack blocking (CCL/DCL 0, AllowTo* 0, its blocking count > 0) -> 0 at once: an online
   pack, or one that is not online (stale, offline, readmitting) whose last fresh data or whose
   present data blocks (`TickContext.held`); such a pack's block holds until fresh data from it
   lifts it or it is forgotten;
3. `freshness.on_pack_lost`: "block_charge" -> CCL 0 while any known pack is offline, "block" ->
   CCL and DCL 0; "degrade" -> nothing extra (the limits come from the online packs only);
4. otherwise the strategy's limit, capped at the per-pack-share limit L (an invalid limit from the
   strategy becomes L, a negative one 0). With held packs L is the lower of two cases: they left
   the circuit (L of the online packs alone) or they are still in it with their last fresh limits,
   capacity and current (L over all of them), so a pack dropping out never raises L.
CVL is capped at the lowest last fresh CVL of the held packs (own charge control caps by cells
itself, with each pack's last trusted cell count, held packs included).
An invalid CVL from a strategy while packs are online is replaced by the lowest pack CVL: an
invalid CVL would deselect the BMS (victron-contract §4.6) and leave the bank unlimited.

PassthroughCharge: CCL/DCL = the envelope itself; CVL per `charge.passthrough.cvl_mode`: "min" =
the lowest CVL of the online packs, "absorption_hold" = strategies.cvl_arbitration.AbsorptionHold
(the bank stays in absorption until every pack has finished; no pack is given more than its own
charge CVL, and a pack lowering its CVL still wins, also after it was offline).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from aggbatt.core.events import Event, LimitSourceChanged
from aggbatt.core.snapshot import PackSnapshot
from aggbatt.core.strategies import ChargeLimits, CurrentResult, TickContext
from aggbatt.core.strategies.cvl_arbitration import AbsorptionHold

MEASURED_SHARE_FLOOR = 1.0  # A: below this a BMS current ratio is mostly measurement noise


@dataclass(frozen=True)
class Direction:
    key: str  # "charge" / "discharge"
    verb: str  # "charging" / "discharging"
    sign: float  # +1: charging current is positive
    label: str  # "CCL" / "DCL"
    limit_attr: str  # PackSnapshot attribute of the pack limit

    def limit(self, pack: PackSnapshot) -> float | None:
        value: float | None = getattr(pack, self.limit_attr)
        return value

    def block(self, pack: PackSnapshot) -> str | None:
        return pack.charge_block() if self.sign > 0 else pack.discharge_block()


CHARGE = Direction("charge", "charging", 1.0, "CCL", "ccl")
DISCHARGE = Direction("discharge", "discharging", -1.0, "DCL", "dcl")


def measurable_current(config: Any) -> float:
    """Bank current (A) from which measured shares are used."""
    return max(float(config.freshness.idle_current), MEASURED_SHARE_FLOOR)


def capacity_shares(packs: Sequence[PackSnapshot]) -> dict[str, float]:
    total = sum(p.installed_capacity for p in packs if p.installed_capacity is not None)
    return {p.id: _share(p.installed_capacity, total) for p in packs}


def _share(capacity: float | None, total: float) -> float:
    share = capacity / total if capacity is not None and total > 0.0 else 0.0
    return share if 0.0 < share < math.inf else 1.0


def measured_shares(packs: Sequence[PackSnapshot], direction: Direction,
                    min_current: float) -> dict[str, float] | None:
    """I_i / I_bank in `direction`, or None while the bank current is too small to measure."""
    bank = direction.sign * sum(p.current for p in packs if p.current is not None)
    if bank < min_current or bank <= 0.0:
        return None
    return {p.id: max(0.0, direction.sign * p.current) / bank if p.current is not None else 0.0
            for p in packs}


def pack_shares(packs: Sequence[PackSnapshot], direction: Direction,
                min_current: float,
                remembered: Mapping[str, tuple[float, float]] | None = None) -> dict[str, float]:
    """max(capacity, measured, remembered share) per pack; `remembered`: id -> (last measured
    share in `direction`, its weight now), see ShareMemory."""
    capacity = capacity_shares(packs)
    measured = measured_shares(packs, direction, min_current) or {}
    out = {}
    for p in packs:
        share = max(capacity[p.id], measured.get(p.id, 0.0))
        last, weight = (remembered or {}).get(p.id, (0.0, 0.0))
        out[p.id] = max(share, capacity[p.id] + (last - capacity[p.id]) * weight)
    return out


SHARE_HALF_LIFE = 3600.0  # s: a remembered share loses half its excess over the capacity share


class ShareMemory:
    """Each pack's last measured share per direction, for the ticks without a measurement."""

    def __init__(self) -> None:
        self._last: dict[str, dict[str, tuple[float, float]]] = {CHARGE.key: {}, DISCHARGE.key: {}}

    def update(self, now: float, packs: Sequence[PackSnapshot],
               min_current: float) -> dict[str, dict[str, tuple[float, float]]]:
        """Remember this tick's measured shares; per direction, id -> (share, weight now)."""
        out: dict[str, dict[str, tuple[float, float]]] = {}
        for direction in (CHARGE, DISCHARGE):
            memory = self._last[direction.key]
            measured = measured_shares(packs, direction, min_current)
            for pack_id, share in (measured or {}).items():
                memory[pack_id] = (share, now)
            out[direction.key] = {
                pack_id: (share, 0.5 ** (max(0.0, now - when) / SHARE_HALF_LIFE))
                for pack_id, (share, when) in memory.items()}
        return out


@dataclass(frozen=True)
class ShareLimit:
    limit: float | None  # bank limit in A; None when there is no pack
    pack: PackSnapshot | None  # the pack that sets it
    share: float
    pack_limit: float

    def reason(self, direction: Direction) -> str:
        if self.pack is None:
            return "no pack online"
        return f"{self.pack.name} {direction.label} {round(self.pack_limit, 1):g} A at {self.share:.0%} share"


def share_limit(packs: Sequence[PackSnapshot], direction: Direction,
                min_current: float,
                remembered: Mapping[str, tuple[float, float]] | None = None) -> ShareLimit:
    """The per-pack-share cap L (module header). Packs without a valid limit are skipped; the
    engine never passes such a pack as online."""
    shares = pack_shares(packs, direction, min_current, remembered)
    best = ShareLimit(None, None, 0.0, 0.0)
    for pack in packs:
        own = direction.limit(pack)
        if own is None:
            continue
        bank = own / shares[pack.id]
        if best.limit is None or bank < best.limit:
            best = ShareLimit(bank, pack, shares[pack.id], own)
    return best


@dataclass(frozen=True)
class Bound:
    """The envelope of one direction: the highest limit allowed and why."""

    cap: float | None  # None = no pack online, publish invalid
    reason: str
    source: str  # stable key: "none", "block:<id>", "pack_lost", "share"


def limiting_packs(ctx: TickContext) -> tuple[PackSnapshot, ...]:
    """The packs whose blocks and limits bound the bank: the online ones, plus the last fresh
    data of those that are not online (going quiet or offline never raises a limit)."""
    return (*ctx.online, *ctx.held)


def bound(ctx: TickContext, direction: Direction) -> Bound:
    if not ctx.online:
        return Bound(None, "no pack online", "none")
    held = {id(pack) for pack in ctx.held}
    for pack in limiting_packs(ctx):
        why = direction.block(pack)
        if why is not None:
            last = ", its last fresh data; not online" if id(pack) in held else ""
            return Bound(0.0, f"{pack.name} blocks {direction.verb} ({why}{last})",
                         f"block:{pack.id}")
    policy = ctx.config.freshness.on_pack_lost
    blocks = policy == "block" or (policy == "block_charge" and direction is CHARGE)
    if blocks and ctx.offline:
        lost = ctx.offline[0]
        return Bound(0.0, f"{lost.name} offline, on_pack_lost = {policy}", "pack_lost")
    minimum = measurable_current(ctx.config)
    remembered = ctx.shares.get(direction.key)
    share = share_limit(ctx.online, direction, minimum, remembered)
    if ctx.held:
        # A pack that is not online may have left the circuit (the online packs then carry all
        # the current) or still be in it, taking its share: the limit must hold in both cases.
        with_held = share_limit(limiting_packs(ctx), direction, minimum, remembered)
        if with_held.limit is not None and (share.limit is None or with_held.limit < share.limit):
            share = with_held
    if share.limit is None:
        return Bound(0.0, f"no pack with a valid {direction.label}", "no_limit")
    return Bound(share.limit, share.reason(direction), "share")


def min_pack_cvl(ctx: TickContext) -> float | None:
    cvls = [p.cvl for p in limiting_packs(ctx) if p.cvl is not None]
    return min(cvls) if cvls else None


def held_cvl(ctx: TickContext) -> float | None:
    """The highest CVL the packs that are not online allow: their last fresh CVL. (Own charge
    control caps by cells itself, with each pack's last trusted cell count.)"""
    cvls = [p.cvl for p in ctx.held if p.cvl is not None]
    return min(cvls) if cvls else None


def _usable(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def apply_envelope(limits: ChargeLimits, ctx: TickContext) -> ChargeLimits:
    """`limits` with CCL/DCL (and an unusable CVL) brought inside the safety envelope."""
    if not ctx.online:
        return replace(limits, cvl=None, ccl=None, dcl=None, charge_reason="no pack online",
                       discharge_reason="no pack online", charge_source="none",
                       discharge_source="none")
    out = limits
    if not _usable(limits.cvl) or limits.cvl <= 0.0:  # type: ignore[operator]
        out = replace(out, cvl=min_pack_cvl(ctx))
    held = held_cvl(ctx)
    if held is not None and out.cvl is not None and out.cvl > held:
        out = replace(out, cvl=held)
    charge, discharge = bound(ctx, CHARGE), bound(ctx, DISCHARGE)
    if not _usable(out.ccl) or out.ccl > charge.cap:  # type: ignore[operator]
        out = replace(out, ccl=charge.cap, charge_reason=charge.reason, charge_source=charge.source)
    if not _usable(out.dcl) or out.dcl > discharge.cap:  # type: ignore[operator]
        out = replace(out, dcl=discharge.cap, discharge_reason=discharge.reason,
                      discharge_source=discharge.source)
    return replace(out, ccl=max(0.0, float(out.ccl)), dcl=max(0.0, float(out.dcl)))  # type: ignore[arg-type]


class PassthroughCharge:
    """CVL per cvl_mode; CCL/DCL = the per-pack-share envelope (module header)."""

    name = "passthrough"

    def __init__(self, config: object = None) -> None:
        mode = getattr(getattr(getattr(config, "charge", None), "passthrough", None), "cvl_mode", "min")
        if mode not in ("min", "absorption_hold"):
            raise ValueError(f"charge.passthrough.cvl_mode = {mode!r} is not available in this "
                             "version (available: min, absorption_hold)")
        self._hold = AbsorptionHold() if mode == "absorption_hold" else None
        self._cvl_source = ""

    def limits(self, ctx: TickContext, current: CurrentResult) -> ChargeLimits:
        charge, discharge = bound(ctx, CHARGE), bound(ctx, DISCHARGE)
        events: list[Event] = []
        if self._hold is not None:
            known = {p.id for p in ctx.online} | {p.id for p in ctx.offline}
            held = self._hold.arbitrate(ctx.online, known)
            cvl = held.cvl
            if held.source != self._cvl_source:
                self._cvl_source = held.source
                events.append(LimitSourceChanged("CVL", held.reason))
        else:
            cvl = min_pack_cvl(ctx)
        return ChargeLimits(
            cvl=cvl, ccl=charge.cap, dcl=discharge.cap,
            charge_reason=charge.reason, discharge_reason=discharge.reason,
            charge_source=charge.source, discharge_source=discharge.source, events=tuple(events),
        )
