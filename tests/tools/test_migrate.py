"""aggbatt migrate-ini: the reference's example configs and state files into our TOML and state.

Expected numbers are the reference presets as listed by hand in docs/reference-aggregator.md §6 and §8,
not read back from the converter.
"""

from __future__ import annotations

import json
import os
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from aggbatt.cli import main
from aggbatt.config import load_config
from aggbatt.core.strategies import CurrentResult
from aggbatt.core.strategies.balancing import BalancingRecord
from aggbatt.core.strategies.coulomb import CoulombParams, CoulombSoc, parse_record
from aggbatt.daemon.persist import read_json
from aggbatt.tools.migrate import REFERENCE_DEFAULTS, MigrationError, date_of_day, migrate
from tests.factories import SB, snapshot, tick_context

REF = Path(__file__).parents[1] / "fixtures" / "reference"
TODAY = date(2026, 11, 25)

LFP_MONTHS = [3.55, 3.50, 3.50, 3.45, 3.40, 3.40, 3.40, 3.40, 3.45, 3.50, 3.50, 3.55]
LTO_MONTHS = [2.50, 2.45, 2.45, 2.40, 2.35, 2.35, 2.35, 2.35, 2.40, 2.45, 2.45, 2.50]


def run(ini: Path, out: Path, **kwargs):
    return migrate(ini, out, today=TODAY, **kwargs)


def reported_keys(result) -> set[str]:
    m = result.migration
    return (set(m.origin.values()) | {n.key for n in m.not_mapped} | {n.key for n in m.not_needed})


def test_lfp_preset_numbers(tmp_path: Path) -> None:
    result = run(REF / "config_LFP.ini", tmp_path / "lfp.toml")
    cfg = load_config(tmp_path / "lfp.toml")
    own = cfg.charge.own
    assert cfg.charge.strategy == "own"
    assert cfg.soc.strategy == "coulomb_counter"
    assert cfg.current.source == "victron_devices"
    assert cfg.discovery.expected_packs == 2
    assert cfg.soc.charge_efficiency == pytest.approx(0.98)
    assert own.charge_cell_voltage == pytest.approx(LFP_MONTHS)
    # Charge knots 2.90, 2.95, 3.30, 3.40, 3.45 V -> 0.2, 1, 1, 0.1, 0 = 40, 200, 200, 20, 0 A.
    assert own.cell_charge_voltages == pytest.approx([2.90, 2.95, 3.30, 3.40, 3.45])
    assert [f * own.max_charge_current for f in own.cell_charge_factors] == pytest.approx(
        [40, 200, 200, 20, 0])
    # Discharge knots 2.90, 3.00, 3.10 V -> 0, 0.05, 1 = 0, 10, 200 A.
    assert own.cell_discharge_voltages == pytest.approx([2.90, 3.00, 3.10])
    assert [f * own.max_discharge_current for f in own.cell_discharge_factors] == pytest.approx(
        [0, 10, 200])
    assert (own.min_cell_voltage, own.min_cell_hysteresis, own.max_cell_voltage,
            own.balancing_cell_voltage) == pytest.approx((2.90, 0.1, 3.45, 3.40))
    assert own.balancing_repetition == 10
    assert own.cell_diff_max == pytest.approx(0.025)
    assert (cfg.soc.full_cell_voltage, cfg.soc.empty_cell_voltage) == pytest.approx((3.45, 2.90))
    ini_keys = set(REFERENCE_DEFAULTS)
    assert reported_keys(result) == ini_keys


def test_lto_preset_numbers(tmp_path: Path) -> None:
    run(REF / "config_LTO.ini", tmp_path / "lto.toml")
    cfg = load_config(tmp_path / "lto.toml")
    own = cfg.charge.own
    assert cfg.charge.strategy == "own"
    assert own.charge_cell_voltage == pytest.approx(LTO_MONTHS)
    assert own.cell_charge_voltages == pytest.approx([1.90, 1.95, 2.40, 2.50, 2.60])
    assert own.cell_charge_factors == pytest.approx([0.2, 1, 1, 0.1, 0])
    assert own.cell_discharge_voltages == pytest.approx([1.90, 2.00, 2.10])
    assert own.cell_discharge_factors == pytest.approx([0, 0.05, 1])
    assert (own.min_cell_voltage, own.min_cell_hysteresis, own.max_cell_voltage,
            own.balancing_cell_voltage) == pytest.approx((1.9, 0.3, 2.6, 2.5))
    assert (own.max_charge_current, own.max_discharge_current) == (200, 200)
    assert (cfg.soc.full_cell_voltage, cfg.soc.empty_cell_voltage) == pytest.approx((2.5, 1.9))


def test_default_ini_is_pass_through_and_lists_what_it_cannot_map(tmp_path: Path, capsys) -> None:
    code = main(["migrate-ini", str(REF / "config.default.ini"), "--out", str(tmp_path / "d.toml")])
    assert code == 0
    cfg = load_config(tmp_path / "d.toml")
    assert cfg.charge.strategy == "passthrough"
    assert cfg.charge.passthrough.cvl_mode == "min"
    assert cfg.soc.strategy == "bms_average"
    assert cfg.current.source == "bms_sum"
    assert cfg.discovery.expected_packs == 0  # -1 in the reference = not set
    out = capsys.readouterr().out
    not_mapped = out.split("NOT MAPPED", 1)[1].split("state:", 1)[0]
    assert "NR_OF_BATTERIES = -1" in not_mapped
    assert "IGNORE_SMARTSHUNT_ABSENCE = False" in not_mapped
    assert "NR_OF_CELLS_PER_BATTERY = -1" in out.split("NOT MAPPED", 1)[0]
    # The written file keeps the list too, for later reference.
    assert "#   NR_OF_BATTERIES = -1" in (tmp_path / "d.toml").read_text()


def test_user_file_overrides_reference_defaults(tmp_path: Path) -> None:
    # A typical user config.ini: few keys, no section header, reference defaults for the rest.
    ini = tmp_path / "config.ini"
    ini.write_text("OWN_CHARGE_PARAMETERS = True\nBALANCING_VOLTAGE = 3.42\n"
                   "MAX_CHARGE_CURRENT = 150\nKEEP_MAX_CVL = True\n"
                   "USE_SMARTSHUNTS = [278, \"FrontShunt\"]\nCURRENT_FROM_VICTRON = True\n")
    result = run(ini, tmp_path / "c.toml")
    cfg = load_config(tmp_path / "c.toml")
    own = cfg.charge.own
    assert own.balancing_cell_voltage == pytest.approx(3.42)
    assert own.max_charge_current == 150
    # Derived knots use the user's balancing voltage: BAL - 0.1 and BAL.
    assert own.cell_charge_voltages == pytest.approx([2.90, 2.95, 3.32, 3.42, 3.45])
    assert own.charge_cell_voltage == pytest.approx(LFP_MONTHS)
    assert cfg.current.shunts == [278, "FrontShunt"]
    assert cfg.current.all_shunts is False
    assert cfg.charge.passthrough.cvl_mode == "absorption_hold"
    assert any(n.key == "KEEP_MAX_CVL" for n in result.migration.notes)


def test_aggregate_charge_mode_wins_over_keep_max_cvl(tmp_path: Path) -> None:
    ini = tmp_path / "config.ini"
    ini.write_text("[DEFAULT]\nAGGREGATE_CHARGE_MODE = True\nKEEP_MAX_CVL = False\n")
    result = run(ini, tmp_path / "c.toml")
    assert load_config(tmp_path / "c.toml").charge.passthrough.cvl_mode == "absorption_hold"
    assert any(n.key == "KEEP_MAX_CVL" for n in result.migration.not_needed)


def test_bad_unknown_and_rejected_values_are_reported_and_output_still_loads(tmp_path: Path) -> None:
    ini = tmp_path / "config.ini"
    ini.write_text("[DEFAULT]\nMAX_DISCHARGE_CURRENT = lots\nUSE_STALE_DATA = True\n"
                   "UPDATE_INTERVAL_DATA = 0.01\nCELL_CHARGE_LIMITED_CURRENT = 0.5, 1\n"
                   "MULTI_KEYWORD =\nBATTERY_EFFICIENCY = 0.95\n")
    result = run(ini, tmp_path / "c.toml")
    cfg = load_config(tmp_path / "c.toml")
    why = {n.key: n.message for n in result.migration.not_mapped}
    assert "not a number" in why["MAX_DISCHARGE_CURRENT"]
    assert cfg.charge.own.max_discharge_current == 200  # aggbatt's default kept
    assert "unknown key" in why["USE_STALE_DATA"]
    assert "tick_interval" in why["UPDATE_INTERVAL_DATA"]  # 0.01 s is below aggbatt's 0.1 s
    assert cfg.service.tick_interval == 1.0
    assert "5 voltages" in why["CELL_CHARGE_LIMITING_VOLTAGE"]
    assert "CELL_CHARGE_LIMITED_CURRENT" in why
    assert "shunt_alone" in why["MULTI_KEYWORD"]
    assert cfg.soc.charge_efficiency == pytest.approx(0.95)  # the rest still converts


def test_existing_output_needs_force(tmp_path: Path, capsys) -> None:
    out = tmp_path / "config.toml"
    out.write_text("# mine\n")
    args = ["migrate-ini", str(REF / "config_LFP.ini"), "--out", str(out)]
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_text() == "# mine\n"
    assert main(args + ["--force"]) == 0
    assert load_config(out).charge.strategy == "own"
    with pytest.raises(MigrationError):
        run(REF / "config_LFP.ini", out)


def test_state_files_convert_and_load_in_the_daemons_readers(tmp_path: Path) -> None:
    ref = tmp_path / "dab"
    ref.mkdir()
    (ref / "config.ini").write_text("OWN_SOC = True\n")
    (ref / "storedvalue_charge").write_text("512.345\n")
    (ref / "storedvalue_last_balancing").write_text("359\n")
    saved = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc).timestamp()
    os.utime(ref / "storedvalue_charge", (saved, saved))
    state = tmp_path / "state"
    result = run(ref / "config.ini", tmp_path / "c.toml", state_dir=state)
    soc = json.loads((state / "soc.json").read_text())
    assert soc == {"version": 1, "charge_ah": 512.345, "saved_at": "2026-11-24T12:00:00+00:00"}
    # 2025 is no leap year: day 359 = 25 December, the last one before 2026-11-25.
    assert json.loads((state / "balancing.json").read_text()) == {
        "version": 1, "last_balancing": "2025-12-25"}
    # The daemon's own readers accept both files.
    read = read_json(state / "soc.json", 1)
    assert parse_record(read.data, read.problem, saved + 60, CoulombParams()) == (512.345, None, 60.0)
    record, problems = BalancingRecord.from_json(json.loads((state / "balancing.json").read_text()))
    assert record.last_balancing == date(2025, 12, 25) and problems == []
    assert any("512.345 Ah" in line for line in result.state_lines)


def test_state_sentinels_legacy_names_and_no_overwrite(tmp_path: Path) -> None:
    ref = tmp_path / "dab"
    ref.mkdir()
    (ref / "config.ini").write_text("")
    (ref / "charge").write_text("-1\n")  # pre-4.0 name; -1 = start from the BMS SoCs
    (ref / "last_balancing").write_text("0\n")  # 0 = never
    state = tmp_path / "state"
    state.mkdir()
    (state / "balancing.json").write_text('{"version": 1, "last_balancing": "2026-11-01"}\n')
    result = run(ref / "config.ini", tmp_path / "c.toml", state_dir=state)
    assert not (state / "soc.json").exists()
    assert json.loads((state / "balancing.json").read_text())["last_balancing"] == "2026-11-01"
    assert any("--force" in line for line in result.state_lines)
    run(ref / "config.ini", tmp_path / "c.toml", state_dir=state, force=True)
    assert json.loads((state / "balancing.json").read_text()) == {"version": 1, "last_balancing": None}


def test_reference_fixture_state_samples(tmp_path: Path) -> None:
    # The reference repository ships -1 and 359 (reference §8).
    state = tmp_path / "state"
    result = run(REF / "config_LTO.ini", tmp_path / "c.toml", state_dir=state)
    assert not (state / "soc.json").exists()
    assert json.loads((state / "balancing.json").read_text())["last_balancing"] == "2025-12-25"
    assert len(result.state_lines) == 2


@pytest.mark.parametrize(("day", "today", "expected"), [
    (359, date(2026, 11, 25), date(2025, 12, 25)),
    (329, date(2026, 11, 25), date(2026, 11, 25)),  # today itself counts
    (330, date(2026, 11, 25), date(2025, 11, 26)),
    (1, date(2026, 1, 1), date(2026, 1, 1)),
    (60, date(2024, 3, 1), date(2024, 2, 29)),  # leap year
    (366, date(2026, 6, 1), date(2024, 12, 31)),  # the last year that had a day 366
    (366, date(2024, 12, 31), date(2024, 12, 31)),
])
def test_day_of_year_to_date(day: int, today: date, expected: date) -> None:
    assert date_of_day(day, today) == expected


@pytest.mark.parametrize("day", [0, 367, -5])
def test_day_of_year_out_of_range(day: int) -> None:
    with pytest.raises(ValueError):
        date_of_day(day, TODAY)


def _soc_as_packs_come_online(config_toml: Path, state: Path, wall: float) -> list[float | None]:
    """The own SoC the daemon publishes from the converted files while four 280 Ah packs whose
    BMS says 90 % come online one by one, ten seconds apart."""
    strategy = CoulombSoc.from_config(load_config(config_toml))
    read = read_json(state / "soc.json", 1)
    strategy.counter.load(read.data, read.problem, wall)
    packs = [snapshot(f"P{i}", service=f"{SB}p{i}", voltage=53.0, current=0.0, soc=90.0,
                      installed_capacity=280.0) for i in range(4)]
    published = []
    for t in range(120):
        ctx = tick_context(packs[:1 + t // 10], now=float(t))
        published.append(strategy.estimate(ctx, CurrentResult(0.0, 0.0, "bms_sum")).soc)
    return published


@pytest.mark.parametrize("capacity", [["1120"], ["280,280,280,280"], []])
def test_migrated_soc_stays_as_packs_come_online_one_by_one(tmp_path: Path, capacity) -> None:
    ref = tmp_path / "dab"
    ref.mkdir()
    (ref / "config.ini").write_text("OWN_SOC = True\n")
    (ref / "storedvalue_charge").write_text("560\n")         # half of 4 x 280 Ah
    state = tmp_path / "state"
    args = ["migrate-ini", str(ref / "config.ini"), "--out", str(tmp_path / "c.toml"),
            "--state-dir", str(state)]
    assert main(args + (["--capacity", *capacity] if capacity else [])) == 0
    published = _soc_as_packs_come_online(tmp_path / "c.toml", state,
                                          (ref / "storedvalue_charge").stat().st_mtime + 60)
    if capacity:                                              # known from the first pack on
        assert published == [pytest.approx(50.0)] * len(published)
    else:                                                     # nothing until the bank is there
        known = [soc for soc in published if soc is not None]
        assert published[0] is None and published[-1] is not None
        assert known == pytest.approx([50.0] * len(known))
