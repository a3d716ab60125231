"""Scenario files: validation errors that name event and key, and timed runs on a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest
from dbus_fast import Variant

from aggbatt.sim.bank import SimBank
from aggbatt.sim.scenario import ACTIONS, FakeClock, Scenario, ScenarioError, load_scenario
from tests.busclient import get_items

EXAMPLE = Path(__file__).resolve().parents[2] / "scenarios" / "pack-failure.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def errors_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, text))
    return info.value.errors


def test_the_shipped_example_loads_and_fits_a_three_pack_bank():
    scenario = load_scenario(EXAMPLE)
    assert scenario.description
    assert [e.at for e in scenario.events] == sorted(e.at for e in scenario.events)
    assert {e.action for e in scenario.events} >= {"link_lost", "freeze", "vanish", "reappear",
                                                   "block_charge", "drift_cell", "current"}
    scenario.check(SimBank(count=3))


async def test_the_example_replays_on_a_bank_that_is_not_on_the_bus():
    bank = SimBank(count=3)
    clock = FakeClock(on_advance=bank.step)
    await load_scenario(EXAMPLE).run(bank, clock)
    assert clock.now() == 160.0
    assert bank.bank_current == -80.0
    assert bank.pack(1).temperature == 1.0
    cells = bank.pack(1).cell_voltages
    assert cells.index(max(cells)) == 4  # cell 5 drifted 120 mV high
    assert not any(p.frozen for p in bank.packs)


def test_every_error_names_event_and_key(tmp_path):
    errors = errors_of(tmp_path, """
        [[event]]
        at = 1.0
        pack = 1
        action = "freez"

        [[event]]
        at = -2
        pack = 0
        action = "drift_cell"
        cell = "three"

        [[event]]
        at = 3
        action = "freeze"
        colour = "red"

        [[event]]
        at = 4
        pack = 1
        action = "current"
        amps = 5

        [[event]]
        at = 5
        pack = 1
        action = "override"
        path = "/Soc"
        value = 1979-05-27
    """)
    text = "\n".join(errors)
    assert "event 1, key 'action': 'freez' is not one of" in text
    assert "event 2, key 'at': must be a number >= 0, got -2" in text
    assert "event 2, key 'pack': must be a pack number >= 1, got 0" in text
    assert "event 2, key 'cell': must be a cell number >= 1, got 'three'" in text
    assert "event 2, key 'mv': missing" in text
    assert "event 3, key 'pack': missing" in text
    assert "event 3, key 'colour': not allowed" in text
    assert "event 4, key 'pack': not allowed for action 'current'" in text
    assert "event 5, key 'value': must be a string, number or boolean" in text
    assert len(errors) == 9


def test_file_level_errors(tmp_path):
    assert "no [[event]] tables" in errors_of(tmp_path, 'description = "empty"')[0]
    one_event = '[[event]]\nat = 0\naction = "current"\namps = 1'
    assert errors_of(tmp_path, "speed = 2\n" + one_event) == [
        "key 'speed': unknown (allowed: description, event)"]
    assert "not valid TOML" in errors_of(tmp_path, "[[event]\nat = ")[0]
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")


def test_every_action_is_accepted(tmp_path):
    args = {"path": '"/Soc"', "value": '"garbage"', "cell": "2", "mv": "10.0", "celsius": "5",
            "amps": "3"}
    blocks = []
    for i, (name, action) in enumerate(ACTIONS.items()):
        lines = [f"at = {i}", f'action = "{name}"'] + (["pack = 1"] if action.needs_pack else [])
        lines += [f"{key} = {args[key]}" for key in action.required]
        blocks.append("[[event]]\n" + "\n".join(lines))
    scenario = load_scenario(write(tmp_path, "\n".join(blocks)))
    assert [e.action for e in scenario.events] == list(ACTIONS)
    drift = next(e for e in scenario.events if e.action == "drift_cell")
    assert (drift.cell, drift.mv) == (2, 10.0)


def test_check_against_the_bank():
    scenario = Scenario.from_dict({"event": [
        {"at": 0, "pack": 4, "action": "freeze"},
        {"at": 1, "pack": 1, "action": "drift_cell", "cell": 17, "mv": 5.0},
        {"at": 2, "pack": 1, "action": "invalidate", "path": "/No/Such"},
    ]})
    with pytest.raises(ScenarioError) as info:
        scenario.check(SimBank(count=3, cells=16))
    text = "\n".join(info.value.errors)
    assert "event 1 (at 0 s), key 'pack': 4 but the bank has 3 packs" in text
    assert "event 2 (at 1 s), key 'cell': 17 but pack 1 has 16 cells" in text
    assert "event 3 (at 2 s), key 'path': pack 1 has no path '/No/Such'" in text


async def test_run_applies_events_at_their_time_on_a_fake_clock():
    bank = SimBank(count=3, capacity_ah=280.0, bank_current=30.0)
    clock = FakeClock(on_advance=bank.step, max_step=0.5)
    scenario = Scenario.from_dict({"event": [
        {"at": 5, "pack": 1, "action": "unblock_charge"},  # listed first, applied second
        {"at": 2, "pack": 1, "action": "block_charge"},
        {"at": 7, "action": "current", "amps": 60.0},
        {"at": 7, "pack": 3, "action": "temperature", "celsius": 30.0},
    ]})
    await scenario.run(bank, clock)
    assert clock.now() == 7.0
    clock.advance(3.0)
    # Pack 1: 10 A for 0-2 s, blocked 2-5 s, 10 A for 5-7 s, 20 A for 7-10 s = 100 A*s.
    # Packs 2 and 3: 10 A * 2 + 15 A * 3 + 10 A * 2 + 20 A * 3 = 145 A*s.
    assert bank.pack(1).soc == pytest.approx(50.0 + 100 / 36 / 280, abs=1e-9)
    assert bank.pack(2).soc == pytest.approx(50.0 + 145 / 36 / 280, abs=1e-9)
    assert bank.pack(3).temperature == 30.0


async def test_run_with_bus_faults(bus_address, connect):
    bank = SimBank(count=2, cells=4)
    await bank.start(bus_address)
    try:
        first = bank.pack(2).unique_name
        scenario = Scenario.from_dict({"event": [
            {"at": 0.0, "pack": 1, "action": "freeze"},
            {"at": 1.0, "pack": 2, "action": "vanish"},
            {"at": 2.0, "pack": 2, "action": "reappear"},
            {"at": 3.0, "pack": 2, "action": "override", "path": "/Soc", "value": "garbage"},
            {"at": 3.0, "pack": 2, "action": "link_lost"},
        ]})
        await scenario.run(bank, FakeClock())
        bank.publish()
        assert bank.pack(1).frozen
        assert bank.pack(2).unique_name not in (None, first)
        items = await get_items(await connect(), bank.pack(2).service_name)
        assert items["/Soc"]["Value"] == Variant("s", "garbage")
        assert items["/System/NrOfModulesOnline"]["Value"] == Variant("i", 0)
    finally:
        await bank.stop()
