"""`aggbatt simulate`: a day of the own charge control against the simulated bank."""

from __future__ import annotations

import csv
import importlib.util
from datetime import date
from pathlib import Path

import pytest

from aggbatt.cli import main
from aggbatt.config import config_from_dict
from aggbatt.tools.simulate import SimulateOptions, cv_current, simulate, solar_current

# A flat charge table lets the current through up to the top, so the high cell (80 mV above the
# others) reaches max_cell_voltage and the dynamic CVL has to hold it there.
OWN = {
    "charge": {"strategy": "own", "own": {
        "charge_cell_voltage": [3.35] * 12, "balancing_cell_voltage": 3.40, "max_cell_voltage": 3.45,
        "cell_charge_voltages": [3.0, 3.5], "cell_charge_factors": [1.0, 1.0],
    }},
}


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def day(tmp_path_factory) -> tuple[list[dict[str, str]], object]:
    out = tmp_path_factory.mktemp("sim")
    result = simulate(config_from_dict(OWN), SimulateOptions(out=out, step=20.0, day=date(2024, 6, 5)))
    return rows(result.csv), result


def test_one_row_per_minute_over_the_whole_day(day):
    data, _ = day
    assert len(data) == 24 * 60 + 1
    assert data[0]["time"] == "00:00" and data[-1]["time"] == "24:00"


def test_cvl_within_cell_limits_and_the_dynamic_cvl_holds_the_high_cell(day):
    data, _ = day
    for row in data:
        assert float(row["cvl_v"]) <= 16 * 3.45 + 1e-6
        assert float(row["ccl_a"]) <= 200.0 and float(row["dcl_a"]) <= 200.0
    # Closed loop with the simulated physics: the peaking cell is held at max_cell_voltage (the
    # charger lag lets it overshoot by a few mV at most), never pushed towards the BMS cut-off.
    assert max(float(row["max_cell_v"]) for row in data) <= 3.455


def test_the_day_shows_balancing_and_dynamic_cvl(day):
    data, _ = day
    modes = {row["charge_mode"] for row in data}
    # Never balanced: the first day is a balancing day, raised to 16 x 3.40 V.
    assert any("charging to the balancing voltage" in m for m in modes)
    assert any(float(row["cvl_v"]) == pytest.approx(54.4, abs=0.01) for row in data)
    # Pack 1's high cell (40 mV above the others) lowers the CVL at the top of the charge.
    assert any("over 3.450 V" in m for m in modes)
    soc = [float(row["true_soc_pct"]) for row in data]
    assert max(soc) > soc[0] + 20  # the sun charged the bank


def test_log_has_the_engines_events_with_simulated_times(day):
    _, result = day
    lines = result.log.read_text().splitlines()
    raised = [line for line in lines if "balancing due: raising CVL to 54.40 V" in line]
    assert len(raised) == 1
    hour = int(raised[0][:2])
    assert 6 <= hour < 20  # it waits for the sun, not midnight
    assert any("dynamic CVL:" in line for line in lines)


def test_png_or_a_hint_how_to_get_it(day):
    _, result = day
    if importlib.util.find_spec("matplotlib") is None:
        assert result.png is None and "aggbatt[plot]" in result.note
    else:
        assert result.png is not None and result.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_solar_bell_and_cv_current():
    assert solar_current(5 * 3600, 100.0) == 0.0
    assert solar_current(13 * 3600, 100.0) == pytest.approx(100.0)
    assert solar_current(21 * 3600, 100.0) == 0.0


def test_cv_current_brings_the_mean_voltage_to_cvl():
    from aggbatt.sim.bank import SimBank
    from aggbatt.sim.pack_model import pack_params

    bank = SimBank(pack_params(2, socs=[90.0, 90.0]))
    volts = sum(bank.packs[0].cell_voltages)
    amps = cv_current(bank.packs, volts + 0.32)
    # 16 cells x 2 mOhm, the current split in half per pack: 0.32 V / (16 x 0.002 x 0.5) = 20 A.
    assert amps == pytest.approx(20.0)


def test_cli(tmp_path: Path, capsys):
    config = tmp_path / "own.toml"
    config.write_text('[charge]\nstrategy = "own"\n')
    code = main(["simulate", "--config", str(config), "--profile", "day", "--out", str(tmp_path / "out"),
                 "--step", "10", "--date", "2024-01-15"])
    assert code == 0
    assert (tmp_path / "out" / "day.csv").exists()
    assert "day.csv" in capsys.readouterr().out


def test_cli_rejects_a_bad_config(tmp_path: Path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("[charge.own]\ncell_charge_voltages = [3.0]\n")
    assert main(["simulate", "--config", str(config), "--out", str(tmp_path)]) == 2
    assert "cell_charge_voltages" in capsys.readouterr().err
