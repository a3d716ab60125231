"""Hypothesis: what must hold after every tick of a random fault sequence (tests/faultgen.py).

The oracle is written from the safety rules, not from the engine's code. It knows what each pack
last published as fresh data (present, not frozen, its BMS link up) and keeps, per pack and path,
the last VALID value of that data: garbage is a loss of information and never replaces a value.

- A pack whose last fresh data blocks a direction (its limit 0, AllowTo* 0, its blocking count > 0)
  keeps that direction at 0 until fresh data from it lifts the block, or the pack is forgotten:
  whether it is online, quiet, frozen, gone, link-lost or readmitting. Fresh blocking data counts
  at the very tick it arrives.
- Every pack's last fresh limits keep capping the bank while it is not online: CVL no higher than
  its CVL, and CCL/DCL no higher than its own limit at the smallest share it can have (its
  capacity over all packs' capacities; unknown capacity: the whole bank).
- No online pack is given more than its own limit at its share: the larger of its capacity share
  among the online packs, its measured share of this tick's current in that direction (measurable
  from `freshness.idle_current`), and its last measured share in that direction, fading towards
  the capacity share with strategies.charge.SHARE_HALF_LIFE.
- `on_pack_lost` block policies stop the direction while a known pack is not online.
- Nothing raises (only the injected failures fail a tick), and a failed tick publishes limits no
  higher than the last good tick of the same process.
A restart forgets what the saved state does not hold (the known pack ids and the blocks of their
last fresh data): the new process knows those blocks and the values the packs show on the bus at
that moment (even a frozen or link-lost pack's), not their earlier limits, nor the measured shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from aggbatt.config import config_from_dict
from aggbatt.core.strategies.charge import SHARE_HALF_LIFE
from tests.core.test_properties import amps, assert_publishable, count, flag, limit, number, volts
from tests.faultgen import (
    DIRECTIONS,
    PackSpec,
    SimPack,
    Step,
    Tick,
    banks,
    fault_settings,
    fault_steps,
    run,
)

CCL, DCL, CVL = "/Info/MaxChargeCurrent", "/Info/MaxDischargeCurrent", "/Info/MaxChargeVoltage"
LIMIT_PATH = {"charge": CCL, "discharge": DCL}
SIGN = {"charge": 1.0, "discharge": -1.0}
IDLE_CURRENT = 2.0  # default freshness.idle_current
TOLERANCE = 1e-9

POLICIES = ("degrade", "block_charge", "block")
SOURCES = ({"source": "bms_sum"}, {"source": "victron_devices", "on_source_lost": "fallback"},
           {"source": "victron_devices", "on_source_lost": "block"})
CONFIGS = {(policy, i): config_from_dict({"freshness": {"on_pack_lost": policy}, "current": source})
           for policy in POLICIES for i, source in enumerate(SOURCES)}

# path -> parser giving the typed value or None (invalid)
PARSERS = {
    "/Info/MaxChargeCurrent": limit, "/Info/MaxDischargeCurrent": limit,
    "/Info/MaxChargeVoltage": volts, "/Dc/0/Current": amps,
    "/InstalledCapacity": lambda x: number(x, 1, 100_000),
    "/Io/AllowToCharge": flag, "/Io/AllowToDischarge": flag,
    "/System/NrOfModulesBlockingCharge": count, "/System/NrOfModulesBlockingDischarge": count,
}
BLOCK_PATHS = {
    "charge": ("/Info/MaxChargeCurrent", "/Io/AllowToCharge", "/System/NrOfModulesBlockingCharge"),
    "discharge": ("/Info/MaxDischargeCurrent", "/Io/AllowToDischarge",
                  "/System/NrOfModulesBlockingDischarge"),
}


def parsed(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for path, parse in PARSERS.items():
        value = parse(values.get(path))
        if value is not None:
            out[path] = value
    return out


def blocks(valid: dict[str, Any], direction: str) -> bool:
    limit_path, allow_path, count_path = BLOCK_PATHS[direction]
    return (valid.get(limit_path) == 0.0 or valid.get(allow_path) == 0
            or valid.get(count_path, 0) > 0)


def blocking(path: str, value: Any) -> bool:
    """This one valid value blocks a direction."""
    return any(path in paths and blocks({path: value}, direction)
               for direction, paths in BLOCK_PATHS.items())


def capacity_shares(capacities: dict[str, float | None]) -> dict[str, float]:
    total = sum(c for c in capacities.values() if c is not None)
    return {i: c / total if c is not None else 1.0 for i, c in capacities.items()}


@dataclass
class Oracle:
    # pack id -> path -> last valid value of its fresh data
    last: dict[str, dict[str, Any]] = field(default_factory=dict)
    # direction -> pack id -> (last measured share, when)
    measured: dict[str, dict[str, tuple[float, float]]] = field(
        default_factory=lambda: {d: {} for d in DIRECTIONS})
    last_good: dict[str, Any] | None = None

    def restart(self, tick: Tick) -> None:
        """A new process knows the saved blocks and the packs' values on the bus, whatever their
        state, and no more."""
        kept = {pack_id: {path: value for path, value in valid.items() if blocking(path, value)}
                for pack_id, valid in self.last.items()}
        for pack in tick.packs:
            if pack.present:
                kept.setdefault(pack.id, {}).update(parsed(pack.values))
        self.last = {pack_id: valid for pack_id, valid in kept.items() if valid}
        self.measured = {d: {} for d in DIRECTIONS}
        self.last_good = None

    def observe(self, tick: Tick) -> None:
        for pack in tick.packs:
            if pack.fresh is None:
                self.last.pop(pack.id, None)
            elif pack.publishing:
                self.last.setdefault(pack.id, {}).update(parsed(pack.fresh))

    def remember_shares(self, tick: Tick, online: dict[str, float | None]) -> None:
        for direction in DIRECTIONS:
            sign = SIGN[direction]
            bank = sign * sum(c for c in online.values() if c is not None)
            if bank >= IDLE_CURRENT:
                for pack_id, current in online.items():
                    share = max(0.0, sign * current) / bank if current is not None else 0.0
                    self.measured[direction][pack_id] = (share, tick.now)


def check_blocks_hold(oracle: Oracle, v: dict[str, Any]) -> None:
    for pack_id, valid in oracle.last.items():
        for direction in DIRECTIONS:
            if blocks(valid, direction):
                assert v[LIMIT_PATH[direction]] in (0.0, None), (
                    f"{pack_id}'s last fresh data blocks {direction}", v[LIMIT_PATH[direction]])


def check_last_fresh_limits_cap(oracle: Oracle, v: dict[str, Any]) -> None:
    cvls = [valid[CVL] for valid in oracle.last.values() if CVL in valid]
    if v[CVL] is not None and cvls:
        assert v[CVL] <= min(cvls) + TOLERANCE, ("CVL above a pack's last fresh CVL", v[CVL], cvls)
    smallest = capacity_shares({i: valid.get("/InstalledCapacity") for i, valid in oracle.last.items()})
    for pack_id, valid in oracle.last.items():
        for direction in DIRECTIONS:
            own, bank_limit = valid.get(LIMIT_PATH[direction]), v[LIMIT_PATH[direction]]
            if own is not None and bank_limit is not None:
                assert bank_limit * smallest[pack_id] <= own * (1 + TOLERANCE) + TOLERANCE, (
                    f"{pack_id}'s last fresh {direction} limit", own, smallest[pack_id], bank_limit)


def check_online_shares(oracle: Oracle, tick: Tick, v: dict[str, Any],
                        online: dict[str, SimPack]) -> None:
    values = {i: parsed(p.values) for i, p in online.items()}
    capacity = capacity_shares({i: vals.get("/InstalledCapacity") for i, vals in values.items()})
    for direction in DIRECTIONS:
        bank_limit = v[LIMIT_PATH[direction]]
        if bank_limit is None:
            continue
        for pack_id, vals in values.items():
            own = vals.get(LIMIT_PATH[direction])
            if own is None:
                continue
            share = capacity[pack_id]
            last, when = oracle.measured[direction].get(pack_id, (0.0, tick.now))
            weight = 0.5 ** (max(0.0, tick.now - when) / SHARE_HALF_LIFE)
            share = max(share, share + (last - share) * weight)
            assert bank_limit * share <= own * (1 + TOLERANCE) + TOLERANCE, (
                f"{pack_id} given more than its {direction} limit", own, share, bank_limit)


def check_policy(policy: str, tick: Tick, v: dict[str, Any]) -> None:
    if any(not status.online for status in tick.result.packs):
        if policy in ("block_charge", "block"):
            assert v[CCL] in (0.0, None)
        if policy == "block":
            assert v[DCL] in (0.0, None)


def check_fail_safe(oracle: Oracle, v: dict[str, Any]) -> None:
    good = oracle.last_good
    if good is None:
        return
    for path in (CCL, DCL, CVL):
        if good[path] is not None and v[path] is not None:
            assert v[path] <= good[path] + TOLERANCE, (f"failed tick raised {path}", v[path], good[path])


def play(specs: list[Any], sequence: list[Any], policy: str, source: int, seed: int,
         checks: tuple[str, ...]) -> None:
    """Run one sequence, checking after every tick the properties named in `checks`."""
    oracle = Oracle()
    for tick in run(specs, sequence, CONFIGS[(policy, source)], seed):
        if tick.step.kind == "restart":
            oracle.restart(tick)
        oracle.observe(tick)
        v = dict(tick.result.values)
        if "fail_safe" in checks:
            assert_publishable(v)
            assert tick.failed == (tick.step.kind == "fail"), "a tick raised by itself"
        if "blocks" in checks:
            check_blocks_hold(oracle, v)
        if "last_limits" in checks:
            check_last_fresh_limits_cap(oracle, v)
        if tick.failed:
            if "fail_safe" in checks:
                check_fail_safe(oracle, v)
            # the failed tick may have measured shares the oracle cannot see: forget them
            oracle.measured = {d: {} for d in DIRECTIONS}
            continue
        by_id = {p.id: p for p in tick.packs}
        online = {s.id: by_id[s.id] for s in tick.result.packs if s.online}
        oracle.remember_shares(tick, {s.id: s.current for s in tick.result.packs if s.online})
        if "shares" in checks:
            check_online_shares(oracle, tick, v, online)
            check_policy(policy, tick, v)
        oracle.last_good = {path: v[path] for path in (CCL, DCL, CVL)}


# Two unequal packs: the small one (A) takes the larger part of the current and has lower limits.
PAIR = [PackSpec(capacity=50.0, resistance=0.5, cells=15, ccl=20.0, dcl=25.0),
        PackSpec(capacity=100.0, resistance=2.0, cells=16, ccl=100.0, dcl=100.0)]
CHARGING = Step("current", 0, 60.0, 1.0)
DISCHARGING = Step("current", 0, -100.0, 1.0)
# Known ways to break the properties, always run besides the random ones:
QUIET_BLOCK = [CHARGING, Step("block", 0, ("charge", 1), 1.0), Step("none", 0, None, 125.0),
               Step("rest", 0, None, 400.0), Step("current", 0, -40.0, 125.0)]
FAULTED_THEN_GONE = [CHARGING, Step("invalid", 0, ("/Dc/0/Voltage", None), 1.0),
                     Step("block", 0, ("charge", 0), 1.0), Step("limits", 0, (1.0, 0.5, -0.8), 1.0),
                     Step("vanish", 0, None, 1.0)]
GONE = [DISCHARGING, Step("vanish", 0, None, 1.0)]
FROZEN_AT_RESTART_THEN_GONE = [DISCHARGING, Step("freeze", 0, None, 1.0),
                               Step("restart", 0, None, 11.0), Step("vanish", 0, None, 1.0)]
LINK_LOST_READMITTING_BLOCKS = [CHARGING, Step("link_loss", 0, None, 1.0),
                                Step("block", 0, ("charge", 0), 11.0),
                                Step("link_back", 0, None, 1.0), Step("none", 0, None, 1.0)]
BLOCK_FLAG_TURNS_INVALID = [CHARGING, Step("block", 0, ("charge", 1), 1.0),
                            Step("invalid", 0, ("/Io/AllowToCharge", None), 1.0)]
SHARE_AFTER_REST = [DISCHARGING, Step("current", 0, -1.0, 1.0), Step("rest", 0, None, 60.0),
                    CHARGING]
FAIL_WHILE_BLOCKED = [DISCHARGING, Step("block", 0, ("discharge", 1), 1.0), Step("fail", 0, None, 1.0)]


def examples(*sequences: list[Step]) -> Any:
    def decorate(test: Any) -> Any:
        for sequence in sequences:
            test = example(PAIR, sequence, "degrade", 0, 0)(test)
        return test
    return decorate


SEQUENCES = (banks(), fault_steps(), st.sampled_from(POLICIES),
             st.integers(0, len(SOURCES) - 1), st.integers(0, 2**16))


@fault_settings(100)
@given(*SEQUENCES)
@examples(QUIET_BLOCK, FAULTED_THEN_GONE, LINK_LOST_READMITTING_BLOCKS, BLOCK_FLAG_TURNS_INVALID)
def test_a_block_holds_until_fresh_data_lifts_it(specs: list[Any], sequence: list[Any],
                                                 policy: str, source: int, seed: int) -> None:
    play(specs, sequence, policy, source, seed, ("blocks",))


@fault_settings(100)
@given(*SEQUENCES)
@examples(GONE, FAULTED_THEN_GONE, FROZEN_AT_RESTART_THEN_GONE)
def test_last_fresh_limits_keep_capping_while_not_online(specs: list[Any], sequence: list[Any],
                                                         policy: str, source: int, seed: int) -> None:
    play(specs, sequence, policy, source, seed, ("last_limits",))


@fault_settings(100)
@given(*SEQUENCES)
@examples(SHARE_AFTER_REST)
def test_no_online_pack_gets_more_than_its_limit_at_its_share(
        specs: list[Any], sequence: list[Any], policy: str, source: int, seed: int) -> None:
    play(specs, sequence, policy, source, seed, ("shares",))


@fault_settings(100)
@given(*SEQUENCES)
@examples(FAIL_WHILE_BLOCKED)
def test_nothing_raises_and_a_failed_tick_publishes_no_more_than_the_last_good(
        specs: list[Any], sequence: list[Any], policy: str, source: int, seed: int) -> None:
    play(specs, sequence, policy, source, seed, ("fail_safe",))
