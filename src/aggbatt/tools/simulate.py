"""`aggbatt simulate`: the configured strategies against a simulated bank, faster than real time.

Theory of operation:

- The bank is `sim.bank.SimBank` (sim.pack_model physics: SoC integrates the current, cells follow
  the open-circuit voltage + I x R + per-cell offsets, each pack's BMS computes its own limits). LFP
  or LTO cells are chosen from the config's max_cell_voltage (below 3 V: LTO).
- The engine is the daemon's own (`engine.Engine`): each step it gets the packs' values as the bus
  monitor would, plus the simulated wall clock, so validation, aggregation, the strategies and the
  safety envelope all run exactly as on the GX device. No D-Bus is involved.
- A charger and the loads close the loop. Solar current follows a bell between 06:00 and 20:00;
  the loads are a base plus an evening peak. The chargers aim at min(solar surplus, CCL, the
  current that holds the bank voltage at CVL); the inverter at min(load deficit, DCL) from the
  bank, the grid covers the rest. Like real chargers (and DVCC, which writes every 3 s) they follow
  their aim with a lag of CHARGER_LAG seconds, not within one step.
- Pack balancers are modelled simply: while a pack charges with its highest cell within 20 mV of
  the balancing voltage, its high cell's extra offset shrinks by BALANCE_RATE.
- One day is simulated in `step` second increments (default 5 s: 17280 ticks). The result is a CSV
  (one row per minute), the engine's log lines (balancing, dynamic CVL, limit changes) and, with
  matplotlib (the `plot` extra), a PNG of voltage, cell extremes, CVL, CCL, DCL and SoC.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from aggbatt.config import Config
from aggbatt.core.engine import CHARGE_LIMITATION, DISCHARGE_LIMITATION, Engine
from aggbatt.core.pack_paths import (
    CCL,
    CHARGE_MODE,
    CVL,
    DCL,
    MAX_CELL_VOLTAGE,
    MIN_CELL_VOLTAGE,
    SOC,
    VOLTAGE,
)
from aggbatt.core.snapshot import ServiceReading
from aggbatt.core.strategies import is_stateful
from aggbatt.core.strategies.balancing import BalancingRecord
from aggbatt.core.strategies.own_charge import BALANCING_FILE
from aggbatt.sim.bank import SimBank
from aggbatt.sim.lfp import ocv as lfp_ocv
from aggbatt.sim.lfp import piecewise_linear
from aggbatt.sim.pack import SimPack
from aggbatt.sim.pack_model import PackParams

DAY = 86400.0
ROW_EVERY = 60.0  # s between CSV rows
CHARGER_LAG = 20.0  # s: time constant of the chargers' and the inverter's response
BALANCE_RATE = 0.010 / 3600.0  # V/s a balancer takes off the high cell's offset
PROFILES = ("day",)

# Lithium titanate: a sloped curve from 1.8 V empty to 2.7 V full, about 2.3 V at half charge.
LTO_TABLE: tuple[tuple[float, float], ...] = (
    (0.00, 1.80), (0.05, 2.05), (0.10, 2.15), (0.20, 2.22), (0.50, 2.28), (0.80, 2.34),
    (0.90, 2.39), (0.95, 2.44), (0.98, 2.52), (1.00, 2.70),
)
lto_ocv = piecewise_linear(LTO_TABLE)


@dataclass(frozen=True)
class SimulateOptions:
    out: Path
    profile: str = "day"
    packs: int = 2
    cells: int | None = None  # None: 16 for LFP, 24 for LTO
    capacity_ah: float = 280.0
    start_soc: float = 40.0
    day: date | None = None  # None: today
    last_balancing: date | None = None  # None: never balanced (a balancing day for "own")
    step: float = 5.0  # s
    imbalance_mv: float = 80.0  # extra offset of one cell in pack 1


@dataclass(frozen=True)
class Row:
    t: float
    pv: float
    load: float
    current: float
    values: dict[str, Any]
    true_soc: float


@dataclass(frozen=True)
class Day:
    rows: list[Row]
    events: list[str]  # the engine's log lines, stamped with the simulated time


@dataclass(frozen=True)
class SimulateResult:
    csv: Path
    log: Path
    png: Path | None
    rows: int
    note: str  # what the user should know (e.g. how to get the PNG)


def is_lto(config: Config) -> bool:
    return float(config.charge.own.max_cell_voltage) < 3.0


def solar_current(t: float, peak: float) -> float:
    """A clear day: a sine bell from 06:00 to 20:00 (t in seconds since midnight)."""
    hour = (t % DAY) / 3600.0
    if not 6.0 < hour < 20.0:
        return 0.0
    return peak * math.sin(math.pi * (hour - 6.0) / 14.0) ** 2


def load_current(t: float, base: float) -> float:
    """A base load, more in the morning and a peak in the evening."""
    hour = (t % DAY) / 3600.0
    extra = 0.0
    if 6.5 <= hour < 8.5:
        extra = 2.0 * base
    elif 18.0 <= hour < 22.5:
        extra = 5.0 * base
    return base + extra


def build_bank(config: Config, options: SimulateOptions) -> SimBank:
    own = config.charge.own
    lto = is_lto(config)
    cells = options.cells or (24 if lto else 16)
    params = [
        PackParams(
            cells=cells, capacity_ah=options.capacity_ah, soc=options.start_soc,
            serial=f"SIM{i + 1:04d}", max_charge_current=options.capacity_ah * 0.5,
            max_discharge_current=options.capacity_ah * 0.5,
            # The BMS protects a little beyond aggbatt's own limits, as a real BMS is set up.
            max_cell_voltage=own.max_cell_voltage + 0.05, min_cell_voltage=own.min_cell_voltage - 0.05,
            float_cell_voltage=own.max_cell_voltage - 0.1,
            ocv=lto_ocv if lto else lfp_ocv,
        )
        for i in range(options.packs)
    ]
    return SimBank(params)


def cv_current(packs: Sequence[SimPack], cvl: float) -> float:
    """The bank charge current that brings the mean pack voltage to `cvl` (capacity split)."""
    total = sum(p.params.capacity_ah for p in packs)
    open_circuit = sum(sum(p.cell_voltages) - p.params.cells * p.params.internal_resistance * p.current
                       for p in packs) / len(packs)
    per_amp = sum(p.params.cells * p.params.internal_resistance * p.params.capacity_ah / total
                  for p in packs) / len(packs)
    return (cvl - open_circuit) / per_amp


def _number(values: dict[str, Any], path: str) -> float | None:
    value = values.get(path)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


class Balancers:
    """The packs' passive balancers: an extra cell offset shrinks while the cell is high."""

    def __init__(self, balancing_cell: float) -> None:
        self.balancing_cell = balancing_cell
        self.extra: dict[tuple[int, int], float] = {}  # (pack index, cell index) -> V

    def unbalance(self, packs: Sequence[SimPack], pack: int, cell: int, volts: float) -> None:
        self.extra[(pack, cell)] = volts
        packs[pack].drift_cell(cell + 1, volts * 1000.0)

    def step(self, packs: Sequence[SimPack], dt: float) -> None:
        for (index, cell), extra in self.extra.items():
            pack = packs[index]
            if extra <= 0.0 or pack.current <= 0.0:
                continue
            if max(pack.cell_voltages) < self.balancing_cell - 0.02:
                continue
            extra = max(0.0, extra - BALANCE_RATE * dt)
            self.extra[(index, cell)] = extra
            pack.drift_cell(cell + 1, extra * 1000.0)


def run_day(config: Config, options: SimulateOptions) -> Day:
    """Simulate one day: one row per ROW_EVERY seconds and every event the engine logged."""
    bank = build_bank(config, options)
    packs = bank.packs
    balancers = Balancers(config.charge.own.balancing_cell_voltage)
    if options.imbalance_mv:
        balancers.unbalance(packs, 0, 0, options.imbalance_mv / 1000.0)
    # The simulated daemon ticks every `step` seconds; strategies that check the tick interval
    # (the Coulomb counter's gap limit) must know it.
    service = config.service.model_copy(update={"tick_interval": min(10.0, options.step)})
    engine = Engine(config.model_copy(update={"service": service}))
    start = datetime.combine(options.day or date.today(), datetime.min.time())
    charge = engine.strategies.charge
    if is_stateful(charge) and charge.state_file.name == BALANCING_FILE:  # it keeps a balancing record
        charge.restore_state(BalancingRecord(last_balancing=options.last_balancing).to_json(),
                             None, start.timestamp())
    total_capacity = sum(p.params.capacity_ah for p in packs)
    peak_pv, base_load = 0.25 * total_capacity, 0.02 * total_capacity
    rows: list[Row] = []
    events: list[str] = []
    t = 0.0
    next_row = 0.0
    current = 0.0
    while t <= DAY:
        # Every value counts as just received: the packs publish on every step.
        readings = [ServiceReading(p.service_name, p.current_values(), t, 0.0) for p in packs]
        result = engine.tick(t, readings, wall=start + timedelta(seconds=t))
        values = dict(result.values)
        stamp = f"{int(t // 3600):02d}:{int(t % 3600 // 60):02d}:{int(t % 60):02d}"
        events.extend(f"{stamp} {event}" for event in result.events)
        pv, load = solar_current(t, peak_pv), load_current(t, base_load)
        cvl, ccl, dcl = _number(values, CVL), _number(values, CCL), _number(values, DCL)
        surplus = pv - load
        if surplus >= 0:
            limits = [surplus, ccl if ccl is not None else 0.0]
            if cvl is not None:
                limits.append(cv_current(packs, cvl))
            aim = max(0.0, min(limits))
        else:
            aim = -min(-surplus, dcl if dcl is not None else 0.0)
        current += (aim - current) * min(1.0, options.step / CHARGER_LAG)
        if t >= next_row:
            rows.append(Row(t, pv, load, current, values, bank.true_soc()))
            next_row += ROW_EVERY
        bank.bank_current = current
        bank.step(options.step)
        balancers.step(packs, options.step)
        t += options.step
    return Day(rows, events)


COLUMNS = ("time", "seconds", "pv_a", "load_a", "bank_current_a", "voltage_v", "max_cell_v",
           "min_cell_v", "cvl_v", "ccl_a", "dcl_a", "soc_pct", "true_soc_pct", "charge_mode",
           "charge_limitation", "discharge_limitation")


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def write_csv(rows: Sequence[Row], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            v = row.values
            writer.writerow([
                f"{int(row.t // 3600):02d}:{int(row.t % 3600 // 60):02d}", f"{row.t:.0f}",
                _fmt(row.pv, 1), _fmt(row.load, 1), _fmt(row.current, 1),
                _fmt(_number(v, VOLTAGE), 3), _fmt(_number(v, MAX_CELL_VOLTAGE), 3),
                _fmt(_number(v, MIN_CELL_VOLTAGE), 3), _fmt(_number(v, CVL), 3),
                _fmt(_number(v, CCL), 1), _fmt(_number(v, DCL), 1), _fmt(_number(v, SOC), 2),
                _fmt(row.true_soc, 2), v.get(CHARGE_MODE) or "", v.get(CHARGE_LIMITATION) or "",
                v.get(DISCHARGE_LIMITATION) or "",
            ])


def write_png(rows: Sequence[Row], path: Path, config: Config, title: str) -> bool:
    """The day as a PNG; False when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = [r.t / 3600.0 for r in rows]

    def series(path: str) -> list[float]:
        return [math.nan if (x := _number(r.values, path)) is None else x for r in rows]

    own = config.charge.own
    fig, axes = plt.subplots(4, 1, sharex=True, figsize=(11, 11))
    ax = axes[0]
    ax.plot(hours, series(VOLTAGE), label="bank voltage")
    ax.plot(hours, series(CVL), label="CVL", linestyle="--")
    ax.set_ylabel("V")
    ax.legend(loc="upper left")
    ax.set_title(title)
    ax = axes[1]
    ax.plot(hours, series(MAX_CELL_VOLTAGE), label="highest cell")
    ax.plot(hours, series(MIN_CELL_VOLTAGE), label="lowest cell")
    ax.axhline(own.max_cell_voltage, color="red", linewidth=0.8, label="max_cell_voltage")
    ax.axhline(own.balancing_cell_voltage, color="orange", linewidth=0.8,
               label="balancing_cell_voltage")
    ax.set_ylabel("V per cell")
    ax.legend(loc="upper left")
    ax = axes[2]
    ax.plot(hours, series(CCL), label="CCL")
    ax.plot(hours, series(DCL), label="DCL")
    ax.plot(hours, [r.current for r in rows], label="bank current", linewidth=0.8)
    ax.set_ylabel("A")
    ax.legend(loc="upper left")
    ax = axes[3]
    ax.plot(hours, series(SOC), label="published SoC")
    ax.plot(hours, [r.true_soc for r in rows], label="true SoC", linestyle=":")
    ax.set_ylabel("%")
    ax.set_xlabel("hour of the day")
    ax.set_xlim(0, 24)
    ax.legend(loc="upper left")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def simulate(config: Config, options: SimulateOptions, source: str = "config") -> SimulateResult:
    if options.profile not in PROFILES:
        raise ValueError(f"unknown profile {options.profile!r} (available: {', '.join(PROFILES)})")
    options.out.mkdir(parents=True, exist_ok=True)
    day = run_day(config, options)
    rows = day.rows
    csv_path = options.out / f"{options.profile}.csv"
    write_csv(rows, csv_path)
    log_path = options.out / f"{options.profile}.log"
    log_path.write_text("".join(f"{line}\n" for line in day.events), encoding="utf-8")
    png_path = options.out / f"{options.profile}.png"
    title = (f"{source}: {options.packs} x {options.cells or (24 if is_lto(config) else 16)} "
             f"cells, {options.capacity_ah:g} Ah, charge {config.charge.strategy}, "
             f"{(options.day or date.today()).isoformat()}")
    if write_png(rows, png_path, config, title):
        return SimulateResult(csv_path, log_path, png_path, len(rows), "")
    return SimulateResult(csv_path, log_path, None, len(rows),
                          "matplotlib is not installed: pip install 'aggbatt[plot]' "
                          "(or pip install matplotlib) and run again to get the PNG")

