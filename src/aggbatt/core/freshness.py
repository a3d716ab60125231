"""Whether a pack may be used: its faults, proof that its data froze, and its online/offline state.

Everything here is pure: values and the clock come in as arguments.

Online/offline state machine
----------------------------
One `PackTracker` per known pack id. Each tick the engine works out whether the pack is healthy
(`fault_of`, then `stale_verdict`) and feeds one `Health` event into the tracker:

- FAULT:   the pack must not be used (reason text attached),
- FRESH:   the pack is healthy but has not yet been healthy for `readmit_after` seconds,
- SETTLED: the pack has been healthy continuously for at least `readmit_after` seconds.

    state \\ event  | FAULT    | FRESH        | SETTLED
    ---------------+----------+--------------+--------
    NEW            | OFFLINE  | ONLINE       | ONLINE
    ONLINE         | OFFLINE  | ONLINE       | ONLINE
    OFFLINE        | OFFLINE  | READMITTING  | ONLINE
    READMITTING    | OFFLINE  | READMITTING  | ONLINE

NEW is a pack not yet judged in this process. Its first admission is immediate so a restarted
daemon publishes a valid aggregate at once; only a pack that has been offline in this process waits
`readmit_after` seconds of continuously healthy data (a flapping link must not flap the limits).

A pack is unhealthy (FAULT) when, checked in this order:
1. its service is not on the bus (gone, or a known pack not seen yet),
2. it reports its own link loss: /System/NrOfModulesOnline == 0 (serialbattery after 10 s of failed
   polls; victron-contract §4.1),
3. /Dc/0/Voltage, /Dc/0/Current, /Info/MaxChargeVoltage, /Info/MaxChargeCurrent or
   /Info/MaxDischargeCurrent is missing (serialbattery's link loss makes V and I invalid but keeps
   the old limits, so both checks are needed),
4. its data is proven frozen (`stale_verdict`).

Quiet is not dead: velib publishes only changes, so a healthy pack at rest, or one that blocks the
direction the bank current flows in (its FET is open, it carries 0 A), may publish nothing for
minutes. Silence alone therefore never makes a pack stale; evidence does:
- a pack that reports current of its own (|I| >= `idle_current`) jitters every second, so no value
  changing for `stale_after` seconds proves it frozen;
- a pack that reports ~0 A is frozen when, for `stale_after` seconds without any change of its
  values, the bank current (the configured current source, else the sum of the online packs) was
  large enough that its capacity share is at least `idle_current`, in a direction it does not
  block: a live pack would have reported that current;
- a driver that hangs answers nothing: the daemon probes a pack quiet for `stale_after_idle`
  seconds with one GetValue, and one that got no answer is stale (`ServiceReading.unresponsive`).
A pack whose data froze while its driver still answers is found when the bank current next flows;
until then its data is what a live pack's would be, and its last limits and blocks count anyway.
A stale verdict sticks until a value of the pack changes: a frozen pack must not come back just
because the bank went to rest and the evidence ended.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

from aggbatt.core.snapshot import PackSnapshot


class PackState(enum.Enum):
    NEW = "new"
    ONLINE = "online"
    OFFLINE = "offline"
    READMITTING = "readmitting"


class Health(enum.Enum):
    FAULT = "fault"
    FRESH = "fresh"
    SETTLED = "settled"


TRANSITIONS: dict[tuple[PackState, Health], PackState] = {
    (PackState.NEW, Health.FAULT): PackState.OFFLINE,
    (PackState.NEW, Health.FRESH): PackState.ONLINE,
    (PackState.NEW, Health.SETTLED): PackState.ONLINE,
    (PackState.ONLINE, Health.FAULT): PackState.OFFLINE,
    (PackState.ONLINE, Health.FRESH): PackState.ONLINE,
    (PackState.ONLINE, Health.SETTLED): PackState.ONLINE,
    (PackState.OFFLINE, Health.FAULT): PackState.OFFLINE,
    (PackState.OFFLINE, Health.FRESH): PackState.READMITTING,
    (PackState.OFFLINE, Health.SETTLED): PackState.ONLINE,
    (PackState.READMITTING, Health.FAULT): PackState.OFFLINE,
    (PackState.READMITTING, Health.FRESH): PackState.READMITTING,
    (PackState.READMITTING, Health.SETTLED): PackState.ONLINE,
}


@dataclass
class PackTracker:
    """Online/offline state of one pack id (see the table in the module header)."""

    id: str
    state: PackState = PackState.NEW
    reason: str | None = "not seen yet"  # why the pack is not online; None while online
    healthy_since: float | None = None
    since: float | None = None  # when the present state was entered
    # Liveness evidence (module header): since when it has held without a break, and the change
    # stamp of the pack's data when it was ruled stale (the verdict sticks until that moves).
    evidence_since: float | None = None
    stale_stamp: float | None = None
    stale_reason: str | None = None

    @property
    def online(self) -> bool:
        return self.state is PackState.ONLINE

    def evidence_for(self, now: float, evidence: str | None, last_change: float) -> float:
        """Seconds `evidence` has held without a break and without a change of the pack's data."""
        if evidence is None:
            self.evidence_since = None
            return 0.0
        if self.evidence_since is None:
            self.evidence_since = now
        return max(0.0, now - max(self.evidence_since, last_change))

    def staleness(self, verdict: str | None, stamp: float) -> str | None:
        """The stale verdict to use: a new one, or the old one while the data has not changed."""
        if verdict is not None:
            self.stale_stamp, self.stale_reason = stamp, verdict
        elif self.stale_stamp is not None and stamp == self.stale_stamp:
            return self.stale_reason
        else:
            self.stale_stamp = self.stale_reason = None
        return verdict

    def update(self, now: float, fault: str | None, readmit_after: float) -> PackState:
        """Feed one tick's verdict; returns the state before it (compare with `.state`)."""
        if fault is not None:
            self.healthy_since = None
            event = Health.FAULT
        else:
            if self.healthy_since is None:
                self.healthy_since = now
            settled = now - self.healthy_since >= readmit_after
            event = Health.SETTLED if settled else Health.FRESH
        before = self.state
        self.state = TRANSITIONS[(before, event)]
        if self.state is not before:
            self.since = now
        self.reason = None if self.state is PackState.ONLINE else (fault or "waiting for re-admission")
        return before


def is_current_flowing(current: float | None, idle_current: float) -> bool:
    return current is not None and abs(current) >= idle_current


def expected_current(snapshot: PackSnapshot, bank_current: float | None, share: float,
                     idle_current: float) -> str | None:
    """What a live pack reporting ~0 A should be showing instead (module header), or None.

    `share` is the pack's part of the bank current (its capacity share). None when the pack reports
    current of its own (the `stale_after` rule covers it), when its share of the bank current is
    below `idle_current`, or when the pack blocks the direction the bank current flows in.
    """
    if bank_current is None or is_current_flowing(snapshot.current, idle_current):
        return None
    if abs(bank_current) * share < idle_current:
        return None
    charging = bank_current > 0.0
    if (snapshot.charge_block() if charging else snapshot.discharge_block()) is not None:
        return None
    return (f"the bank carried {abs(bank_current):.1f} A {'charging' if charging else 'discharging'}, "
            "which it does not block")


def stale_verdict(snapshot: PackSnapshot, age: float, evidence_for: float, evidence: str | None,
                  unresponsive: bool, stale_after: float, idle_current: float) -> str | None:
    """Why the pack's data is proven frozen, or None; see "Quiet is not dead" in the module header.

    `age`: seconds since any value of the pack changed; `evidence_for`: seconds, within `age`, that
    `evidence` (from `expected_current`) has held without a break.
    """
    current = snapshot.current
    if is_current_flowing(current, idle_current) and age > stale_after:
        return (f"no value changed for {age:.1f} s while it reports {current:.1f} A "
                f"(limit {stale_after:g} s)")
    if evidence is not None and evidence_for > stale_after:
        # a pack whose link is lost reports no current at all (it is offline for that anyway)
        reports = f"{current:.1f} A" if current is not None else "no valid current"
        return (f"no value changed for {age:.1f} s while {evidence} and it reports "
                f"{reports} (limit {stale_after:g} s)")
    if unresponsive:
        return f"no value changed for {age:.1f} s and its driver did not answer a probe"
    return None


def data_age(now: float, last_change: Any, appeared_at: Any) -> float | None:
    """Seconds since the pack's values last changed (or it appeared); None when unknowable."""
    stamps = [t for t in (last_change, appeared_at)
              if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)]
    if not stamps:
        return None
    return max(0.0, now - max(stamps))


_REQUIRED = (
    ("voltage", "/Dc/0/Voltage"),
    ("current", "/Dc/0/Current"),
    ("cvl", "CVL (/Info/MaxChargeVoltage)"),
    ("ccl", "CCL (/Info/MaxChargeCurrent)"),
    ("dcl", "DCL (/Info/MaxDischargeCurrent)"),
)


def fault_of(snapshot: PackSnapshot | None, age: float | None, seen_before: bool) -> str | None:
    """Why the pack must not be used right now (checks 1-3 of the module header), or None; only
    then is `stale_verdict` asked (check 4)."""
    if snapshot is None:
        return "service gone" if seen_before else "known pack not present"
    if snapshot.modules_online == 0:
        return "BMS reports its link lost (NrOfModulesOnline 0)"
    for attr, label in _REQUIRED:
        if getattr(snapshot, attr) is None:
            return f"no valid {label}"
    if age is None:
        return "no receive time"
    return None
