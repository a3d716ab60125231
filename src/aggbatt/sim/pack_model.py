"""The physics and BMS of one simulated LiFePO4 pack, without any bus (sim/pack.py publishes it).

`step(dt, current)` advances the pack: SoC integrates the current, cells follow OCV + I*R +
per-cell offsets, the BMS recomputes its limits. The caller owns the clock: time only moves by the
`dt` it passes. Faults the BMS itself would show (blocked charge/discharge, a drifting cell, the
temperature, a lost link to the driver) are state here, so they can be switched at any time.

BMS rules of the simulated pack (serialbattery-like, not a copy of its code):

| Value      | Rule                                                                             |
|------------|----------------------------------------------------------------------------------|
| CVL        | cells * max_cell_voltage; cells * float_cell_voltage in Float                    |
| CCL        | max_charge_current * min(SoC taper, temperature taper, max-cell taper)           |
| DCL        | max_discharge_current * min(SoC taper, temperature taper, min-cell taper)        |
| cell taper | 1 inside [min, max]_cell_voltage, 0 at 0.1 V beyond; once at 0 it stays 0 until |
|            | the cell is back inside [min, max] (the BMS's over/under-voltage cut-off)        |
| AllowTo*   | limit > 0 and not blocked; blocking count = 1 - AllowTo*                         |
| FET        | a pack that does not allow charging (discharging) takes no charge (discharge)    |
|            | current: `step` sets its current to 0                                            |
| ChargeMode | Bulk -> Absorption when max cell >= max_cell_voltage - 0.01 V while charging;    |
|            | Absorption -> Float after absorption_seconds; Float -> Bulk below rebulk_soc     |
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from aggbatt.sim.lfp import OcvCurve, ocv, piecewise_linear

# SoC/temperature tapers as fractions of the configured maximum current. The shapes follow the
# defaults in serialbattery's config.default.ini (CCCM_SOC/DCCM_SOC and CCCM_T/DCCM_T).
_CHARGE_SOC_TAPER = piecewise_linear(((91.0, 1.0), (95.0, 0.5), (98.0, 0.2), (100.0, 0.1)))
_DISCHARGE_SOC_TAPER = piecewise_linear(((0.0, 0.0), (5.0, 0.1), (10.0, 0.2), (20.0, 0.5), (30.0, 1.0)))
_CHARGE_TEMP_TAPER = piecewise_linear(
    ((0.0, 0.0), (2.0, 0.1), (5.0, 0.2), (10.0, 0.4), (15.0, 0.8), (20.0, 1.0), (35.0, 1.0),
     (40.0, 0.4), (55.0, 0.0))
)
_DISCHARGE_TEMP_TAPER = piecewise_linear(
    ((-20.0, 0.0), (0.0, 0.2), (5.0, 0.3), (10.0, 0.4), (15.0, 0.8), (20.0, 1.0), (45.0, 1.0),
     (50.0, 0.4), (60.0, 0.0))
)
_CELL_CUTOFF_MARGIN = 0.1
_ABSORPTION_MARGIN = 0.01
_BALANCE_THRESHOLD = 0.01
# serialbattery recomputes its history and its time-to-go once a minute (HISTORY_ENABLE,
# TIME_TO_SOC_RECALCULATE_EVERY) while it publishes every poll: between two recomputations those
# paths send nothing, and a simulated pack that sent them every poll would inflate the traffic.
_SLOW_RECALC_SECONDS = 60.0
# CurrentAvg is the mean of the last 300 measured currents, rounded like the current.
_CURRENT_AVG_SAMPLES = 300


@dataclass
class PackParams:
    cells: int = 16
    capacity_ah: float = 280.0
    soc: float = 50.0
    serial: str = "SIM0001"
    internal_resistance: float = 0.002
    max_charge_current: float = 100.0
    max_discharge_current: float = 150.0
    max_cell_voltage: float = 3.45
    min_cell_voltage: float = 2.9
    temperature: float = 25.0
    has_temperature: bool = True
    product_name: str | None = None
    custom_name: str | None = None
    device_instance: int | None = None
    cell_offsets_mv: list[float] | None = None
    ocv: OcvCurve = ocv
    float_cell_voltage: float = 3.375
    absorption_seconds: float = 900.0
    rebulk_soc: float = 80.0
    # Measurement noise of a real BMS (uniform, +-) while the pack carries current: its readings
    # then move every second. A pack carrying no current (at rest, or its FET open because it
    # blocks the flowing direction) reads steady values, so velib publishes nothing for minutes.
    noise_a: float = 0.0
    noise_mv: float = 0.0

    def __post_init__(self) -> None:
        if self.cells < 1:
            raise ValueError("a pack needs at least one cell")
        if self.capacity_ah <= 0:
            raise ValueError("capacity_ah must be positive")
        if self.cell_offsets_mv is not None and len(self.cell_offsets_mv) != self.cells:
            raise ValueError(f"cell_offsets_mv needs {self.cells} entries")


@dataclass
class _History:
    total_ah_drawn: float = 0.0
    charged_kwh: float = 0.0
    discharged_kwh: float = 0.0
    min_voltage: float = math.inf
    max_voltage: float = -math.inf
    min_cell: float = math.inf
    max_cell: float = -math.inf
    min_temp: float = math.inf
    max_temp: float = -math.inf
    deepest_discharge: float = 0.0
    since_full: float | None = None
    samples: deque[float] = field(default_factory=lambda: deque(maxlen=_CURRENT_AVG_SAMPLES))


@dataclass(frozen=True)
class MinuteFigures:
    """What the BMS recomputes once a minute: time-to-go and the history counters (None: no
    reading yet)."""

    time_to_go: int | None
    deepest_discharge: float
    total_ah_drawn: float
    charge_cycles: float
    min_voltage: float | None
    max_voltage: float | None
    min_cell: float | None
    max_cell: float | None
    min_temp: float | None
    max_temp: float | None
    since_full: float | None
    discharged_kwh: float
    charged_kwh: float


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class PackModel:
    """One pack's cells, current, SoC, BMS limits, noise and faults (see the module docstring)."""

    def __init__(self, params: PackParams) -> None:
        self.params = params
        self.soc = min(100.0, max(0.0, float(params.soc)))
        self.current = 0.0
        self.measured_current = 0.0
        self._rng = random.Random(params.serial)
        self.temperature = float(params.temperature)
        self.elapsed = 0.0
        self._offsets = [o / 1000.0 for o in (params.cell_offsets_mv or [0.0] * params.cells)]
        self._drift = [0.0] * params.cells
        self._block_charge = False
        self._block_discharge = False
        self._ovp = False
        self._uvp = False
        self.link_down = False
        self.lost_for = 0.0
        self.charge_mode = "Bulk"
        self._absorption_for = 0.0
        self._history = _History()
        self.minute: MinuteFigures
        self._slow_at = -math.inf
        self.cell_voltages: list[float] = []
        self.ccl = self.dcl = self.cvl = 0.0
        self.charge_limitation = self.discharge_limitation = ""
        self._update_cells()
        self._update_bms()
        self._update_history(0.0)
        self._update_slow()

    @property
    def allow_charge(self) -> bool:
        return self.ccl > 0 and not self._block_charge

    @property
    def allow_discharge(self) -> bool:
        return self.dcl > 0 and not self._block_discharge

    def accepts(self, current: float) -> bool:
        """Whether the BMS lets `current` (+ = charging) through its FETs."""
        if current > 0:
            return self.allow_charge
        if current < 0:
            return self.allow_discharge
        return True

    def step(self, dt: float, current: float) -> None:
        """Advance `dt` seconds with `current` amps (+ = charging) offered to the pack."""
        p = self.params
        current = float(current) if self.accepts(current) else 0.0
        self.current = current
        self.measured_current = current + self._jitter(p.noise_a) if current else 0.0
        self.elapsed += dt
        self.soc = min(100.0, max(0.0, self.soc + current * dt / 36.0 / p.capacity_ah))
        self._update_cells()
        self._update_bms()
        self._update_charge_mode(dt)
        self._update_history(dt)
        self._update_slow()
        if self.link_down:
            self.lost_for += dt

    def _update_cells(self) -> None:
        p = self.params
        base = p.ocv(self.soc / 100.0) + self.current * p.internal_resistance
        noise = self.params.noise_mv / 1000.0 if self.current else 0.0
        self.cell_voltages = [base + o + d + self._jitter(noise)
                              for o, d in zip(self._offsets, self._drift, strict=True)]

    def _jitter(self, amplitude: float) -> float:
        return self._rng.uniform(-amplitude, amplitude) if amplitude else 0.0

    def _update_bms(self) -> None:
        p = self.params
        high, low = max(self.cell_voltages), min(self.cell_voltages)
        over, under = high - p.max_cell_voltage, p.min_cell_voltage - low
        self._ovp = over >= _CELL_CUTOFF_MARGIN or (self._ovp and over > 0)
        self._uvp = under >= _CELL_CUTOFF_MARGIN or (self._uvp and under > 0)
        charge_cell = 0.0 if self._ovp else min(1.0, 1.0 - over / _CELL_CUTOFF_MARGIN)
        discharge_cell = 0.0 if self._uvp else min(1.0, 1.0 - under / _CELL_CUTOFF_MARGIN)
        temp = self.temperature if p.has_temperature else 25.0
        charge = {
            "Max Battery Charge Current": 1.0,
            "SoC": _CHARGE_SOC_TAPER(self.soc),
            "Temperature": _CHARGE_TEMP_TAPER(temp),
            "Cell Voltage": max(0.0, charge_cell),
        }
        discharge = {
            "Max Battery Discharge Current": 1.0,
            "SoC": _DISCHARGE_SOC_TAPER(self.soc),
            "Temperature": _DISCHARGE_TEMP_TAPER(temp),
            "Cell Voltage": max(0.0, discharge_cell),
        }
        self.charge_limitation = min(charge, key=charge.__getitem__)
        self.discharge_limitation = min(discharge, key=discharge.__getitem__)
        self.ccl = p.max_charge_current * charge[self.charge_limitation]
        self.dcl = p.max_discharge_current * discharge[self.discharge_limitation]
        if self._block_charge:
            self.ccl, self.charge_limitation = 0.0, "BMS blocked"
        if self._block_discharge:
            self.dcl, self.discharge_limitation = 0.0, "BMS blocked"
        cell_target = p.float_cell_voltage if self.charge_mode == "Float" else p.max_cell_voltage
        self.cvl = p.cells * cell_target

    def _update_charge_mode(self, dt: float) -> None:
        p = self.params
        if self.charge_mode == "Bulk":
            if self.current > 0 and max(self.cell_voltages) >= p.max_cell_voltage - _ABSORPTION_MARGIN:
                self.charge_mode, self._absorption_for = "Absorption", 0.0
        elif self.charge_mode == "Absorption":
            self._absorption_for += dt
            if self._absorption_for >= p.absorption_seconds:
                self.charge_mode = "Float"
                self._update_bms()
        elif self.soc < p.rebulk_soc:
            self.charge_mode = "Bulk"
            self._update_bms()

    def _update_history(self, dt: float) -> None:
        h = self._history
        voltage = sum(self.cell_voltages)
        ah = self.current * dt / 3600.0
        if ah < 0:
            h.total_ah_drawn += ah
            h.discharged_kwh -= ah * voltage / 1000.0
        else:
            h.charged_kwh += ah * voltage / 1000.0
        h.min_voltage = min(h.min_voltage, voltage)
        h.max_voltage = max(h.max_voltage, voltage)
        h.min_cell = min(h.min_cell, min(self.cell_voltages))
        h.max_cell = max(h.max_cell, max(self.cell_voltages))
        if self.params.has_temperature:
            h.min_temp = min(h.min_temp, self.temperature)
            h.max_temp = max(h.max_temp, self.temperature)
        consumed = -(100.0 - self.soc) * self.params.capacity_ah / 100.0
        h.deepest_discharge = min(h.deepest_discharge, consumed)
        if self.soc >= 100.0:
            h.since_full = 0.0
        elif h.since_full is not None:
            h.since_full += dt
        h.samples.append(self.measured_current)

    def _update_slow(self) -> None:
        """Recompute the once-a-minute paths (see _SLOW_RECALC_SECONDS) when their minute is up."""
        if self.elapsed - self._slow_at < _SLOW_RECALC_SECONDS:
            return
        self._slow_at = self.elapsed
        p, h = self.params, self._history
        remaining = p.capacity_ah * self.soc / 100.0
        self.minute = MinuteFigures(
            time_to_go=self._time_to_go(remaining),
            deepest_discharge=h.deepest_discharge,
            total_ah_drawn=h.total_ah_drawn,
            charge_cycles=-h.total_ah_drawn / p.capacity_ah,
            min_voltage=_finite(h.min_voltage),
            max_voltage=_finite(h.max_voltage),
            min_cell=_finite(h.min_cell),
            max_cell=_finite(h.max_cell),
            min_temp=_finite(h.min_temp),
            max_temp=_finite(h.max_temp),
            since_full=h.since_full,
            discharged_kwh=h.discharged_kwh,
            charged_kwh=h.charged_kwh,
        )

    # ----- faults ---------------------------------------------------------------------------------

    def lose_link(self, on: bool = True) -> None:
        """The driver stops hearing from the BMS (`lost_for` counts the seconds since)."""
        if on and not self.link_down:
            self.lost_for = 0.0
        self.link_down = on

    def block_charge(self, on: bool = True) -> None:
        self._block_charge = on
        self._update_bms()

    def block_discharge(self, on: bool = True) -> None:
        self._block_discharge = on
        self._update_bms()

    def drift_cell(self, cell: int, mv: float) -> None:
        """Offset cell `cell` (1-based, as the BMS numbers them) by `mv` millivolts from now on."""
        if not 1 <= cell <= self.params.cells:
            raise ValueError(f"cell {cell} outside 1..{self.params.cells}")
        self._drift[cell - 1] = mv / 1000.0
        self._update_cells()
        self._update_bms()

    def set_temperature(self, celsius: float) -> None:
        self.temperature = float(celsius)
        self._update_bms()

    # ----- what the BMS reports beside the raw readings -------------------------------------------

    @property
    def current_avg(self) -> float:
        """The mean of the last measured currents, as the BMS reports it."""
        samples = self._history.samples
        return sum(samples) / len(samples) if samples else self.measured_current

    @property
    def balancing(self) -> bool:
        high, low = max(self.cell_voltages), min(self.cell_voltages)
        return high >= self.params.max_cell_voltage - 0.05 and high - low >= _BALANCE_THRESHOLD

    def balancing_cells(self) -> list[bool]:
        """Per cell, whether its balancer bleeds it (the cells above the lowest while balancing)."""
        balancing, floor = self.balancing, min(self.cell_voltages) + _BALANCE_THRESHOLD
        return [balancing and v >= floor for v in self.cell_voltages]

    def _time_to_go(self, remaining: float) -> int | None:
        average = self.current_avg
        if abs(average) <= 0.1:
            return None
        target = self.params.capacity_ah - remaining if average > 0 else remaining
        return int(target / abs(average) * 3600)


def pack_params(count: int, *, cells: int = 16, capacity_ah: float = 280.0,
                socs: Sequence[float] | None = None) -> list[PackParams]:
    """`count` identical packs with distinct serials (and SoCs if given)."""
    return [
        PackParams(cells=cells, capacity_ah=capacity_ah, serial=f"SIM{i + 1:04d}",
                   soc=socs[i] if socs is not None else 50.0)
        for i in range(count)
    ]
