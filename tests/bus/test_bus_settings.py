"""bus/settings.py against sim/settings.py on a private dbus-daemon (victron-contract §1.6, §3.2, §5.6)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from dbus_fast import Message, MessageType, Variant

from aggbatt.bus.settings import SettingsClient, SettingSpec, SettingsUnavailable
from aggbatt.sim.settings import SimSettings
from tests.busclient import SignalRecorder, get_value, until

SETTINGS = "com.victronenergy.settings"
DEVICES = "/Settings/Devices"


async def start_sim(connect, **kwargs) -> SimSettings:
    sim = SimSettings(await connect(), **kwargs)
    await sim.start()
    return sim


async def client(connect, timeout: float = 2.0) -> SettingsClient:
    return SettingsClient(await connect(), timeout=timeout)


class Changes:
    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []
        self.event = asyncio.Event()

    def __call__(self, path: str, value: object) -> None:
        self.seen.append((path, value))
        self.event.set()

    async def until(self, predicate, timeout: float = 3.0) -> None:
        await until(self.event, predicate, timeout)


# ----- AddSettings -------------------------------------------------------------------------------


async def test_add_settings_creates_new_and_keeps_existing_values(connect):
    sim = await start_sim(connect, initial={"/Settings/Aggbatt/MaxCellVoltage": 3.45})
    settings = await client(connect)
    result = await settings.add_settings([
        SettingSpec("/Settings/Aggbatt/MaxCellVoltage", 3.50, 2.5, 4.0),
        SettingSpec("/Settings/Aggbatt/Name", "Bank"),
        SettingSpec("/Settings/Aggbatt/Packs", 4, 1, 32, silent=True),
    ])
    assert result == {"/Settings/Aggbatt/MaxCellVoltage": 3.45,
                      "/Settings/Aggbatt/Name": "Bank",
                      "/Settings/Aggbatt/Packs": 4}
    reader = await connect()
    assert await get_value(reader, SETTINGS, "/Settings/Aggbatt/Packs") == Variant("i", 4)
    assert await get_value(reader, SETTINGS, "/Settings/Aggbatt/MaxCellVoltage") == Variant("d", 3.45)
    assert sim.values["/Settings/Aggbatt/Name"] == "Bank"
    # The range given with AddSettings is enforced by SetValue.
    assert await settings.set("/Settings/Aggbatt/Packs", 33) == -1
    assert await settings.set("/Settings/Aggbatt/Packs", 8) == 0
    assert await settings.get("/Settings/Aggbatt/Packs") == 8


async def test_add_settings_errors_are_logged_with_their_meaning(connect, caplog):
    caplog.set_level(logging.INFO, "aggbatt.bus.settings")
    await start_sim(connect, initial={"/Settings/Aggbatt/Packs": 4})
    settings = await client(connect)
    result = await settings.add_settings([
        SettingSpec("/Settings/Aggbatt/Packs", "four"),        # exists as an integer
        SettingSpec("/Settings/Aggbatt/Limit", 50, 0, 10),      # default out of range
        SettingSpec("/Settings/Aggbatt/_Hidden", 1),            # underscore
        SettingSpec("/Settings/Aggbatt/Fine", 1.5),
    ])
    assert result == {"/Settings/Aggbatt/Packs": None, "/Settings/Aggbatt/Limit": None,
                      "/Settings/Aggbatt/_Hidden": None, "/Settings/Aggbatt/Fine": 1.5}
    text = caplog.text
    assert "error -5 (the setting already exists with another type)" in text
    assert "error -7 (default outside min..max)" in text
    assert "error -2 (a path element starts with an underscore)" in text


def test_setting_spec_rejects_what_localsettings_cannot_store():
    with pytest.raises(TypeError):
        SettingSpec("/Settings/Aggbatt/Flag", True)
    with pytest.raises(ValueError, match="/Settings/"):
        SettingSpec("/Aggbatt/Flag", 1)


async def test_add_setting_fallback_for_localsettings_without_add_settings(connect, caplog):
    caplog.set_level(logging.INFO, "aggbatt.bus.settings")
    sim = await start_sim(connect, add_settings=False,
                          initial={"/Settings/Aggbatt/Name": "Shed",
                                   f"{DEVICES}/other/ClassAndVrmInstance": "battery:100"})
    settings = await client(connect)
    result = await settings.add_settings([
        SettingSpec("/Settings/Aggbatt/Name", "Bank"),
        SettingSpec("/Settings/Aggbatt/CellVoltage", 3.45, 2.5, 4.0),
        SettingSpec("/Settings/Aggbatt/Hidden", 7, silent=True),
    ])
    assert result == {"/Settings/Aggbatt/Name": "Shed", "/Settings/Aggbatt/CellVoltage": 3.45,
                      "/Settings/Aggbatt/Hidden": 7}
    assert "no AddSettings" in caplog.text
    assert await settings.set("/Settings/Aggbatt/CellVoltage", 4.5) == -1
    assert sim.values["/Settings/Aggbatt/CellVoltage"] == 3.45
    assert await settings.claim_device_instance("aggregate", preferred=100) == 101


async def test_sim_add_settings_wire_rules(connect):
    """The simulator answers AddSettings like localsettings (victron-contract §3.2)."""
    sim = await start_sim(connect, initial={f"{DEVICES}/a/ClassAndVrmInstance": "battery:7"})
    bus = await connect()

    async def add(path: str, items: list[dict]) -> list[dict]:
        reply = await asyncio.wait_for(bus.call(Message(
            destination=SETTINGS, path=path, interface="com.victronenergy.Settings",
            member="AddSettings", signature="aa{sv}", body=[items])), 3)
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        return [{k: v.value for k, v in entry.items()} for entry in reply.body[0]]

    relative = await add(DEVICES, [{"path": Variant("s", "b/ClassAndVrmInstance"),
                                    "default": Variant("s", "battery:7")}])
    assert relative == [{"path": "b/ClassAndVrmInstance", "error": 0, "value": "battery:8"}]
    assert sim.values[f"{DEVICES}/b/ClassAndVrmInstance"] == "battery:8"
    errors = await add("/", [
        {"path": Variant("s", "Aggbatt/X"), "default": Variant("i", 1)},
        {"path": Variant("s", f"{DEVICES}/c/ClassAndVrmInstance"), "default": Variant("s", "battery:3.5")},
        {"path": Variant("s", "/Settings/Aggbatt/Flag"), "default": Variant("b", True)},
        {"path": Variant("s", DEVICES), "default": Variant("i", 1)},
    ])
    assert [e["error"] for e in errors] == [-9, -6, -3, -8]
    assert all("value" not in e for e in errors)


# ----- DeviceInstance ----------------------------------------------------------------------------


async def test_claim_device_instance_takes_the_next_free_instance_of_its_class(connect):
    await start_sim(connect, initial={
        f"{DEVICES}/serialbattery_A/ClassAndVrmInstance": "battery:100",
        f"{DEVICES}/serialbattery_B/ClassAndVrmInstance": "battery:101",
        f"{DEVICES}/mk3/ClassAndVrmInstance": "vebus:102",
    })
    settings = await client(connect)
    assert await settings.claim_device_instance("aggregate", preferred=100) == 102
    # Claiming again keeps what we have.
    assert await settings.claim_device_instance("aggregate", preferred=100) == 102
    # Another device moved onto our instance is bumped past it.
    assert await settings.set(f"{DEVICES}/serialbattery_A/ClassAndVrmInstance", "battery:102") == 0
    assert await settings.get(f"{DEVICES}/serialbattery_A/ClassAndVrmInstance") == "battery:103"
    assert await settings.set(f"{DEVICES}/serialbattery_A/ClassAndVrmInstance", "nonsense") == -1
    with pytest.raises(ValueError):
        await settings.claim_device_instance("bad/id")


async def test_claim_device_instance_with_a_foreign_class_value_is_refused(connect):
    await start_sim(connect, initial={f"{DEVICES}/aggregate/ClassAndVrmInstance": "grid:40"})
    settings = await client(connect)
    with pytest.raises(SettingsUnavailable, match="expected 'battery:<number>'"):
        await settings.claim_device_instance("aggregate")


# ----- get, set, watch ---------------------------------------------------------------------------


async def test_get_set_and_watch(connect):
    sim = await start_sim(connect, initial={"/Settings/CGwacs/OvervoltageFeedIn": 1,
                                            "/Settings/SystemSetup/MaxChargeCurrent": -1})
    recorder = await SignalRecorder(await connect()).start(SETTINGS)
    settings = await client(connect)
    changes = Changes()
    await settings.watch(["/Settings/CGwacs/OvervoltageFeedIn"], changes)

    assert await settings.get("/Settings/CGwacs/OvervoltageFeedIn") == 1
    sim.set_local("/Settings/SystemSetup/MaxChargeCurrent", 50)  # not watched
    sim.set_local("/Settings/CGwacs/OvervoltageFeedIn", 0)        # the user in the GUI
    await changes.until(lambda: changes.seen)
    assert await settings.set("/Settings/CGwacs/OvervoltageFeedIn", 1) == 0
    await changes.until(lambda: len(changes.seen) == 2)
    assert changes.seen == [("/Settings/CGwacs/OvervoltageFeedIn", 0),
                            ("/Settings/CGwacs/OvervoltageFeedIn", 1)]
    # localsettings signals with PropertiesChanged only.
    await recorder.wait_for(lambda: len(recorder.of("PropertiesChanged")) == 3)
    assert recorder.of("ItemsChanged") == []

    assert await settings.get("/Settings/No/Such") is None
    assert await settings.set("/Settings/No/Such", 1) == -1
    await settings.close()
    sim.set_local("/Settings/CGwacs/OvervoltageFeedIn", 0)
    await recorder.wait_for(lambda: len(recorder.of("PropertiesChanged")) == 4)
    assert len(changes.seen) == 2


async def test_watch_follows_a_restarted_settings_service(connect, tmp_path):
    state = str(tmp_path / "settings.json")
    first = await start_sim(connect, state_file=state, initial={"/Settings/Aggbatt/Mode": 1})
    settings = await client(connect)
    changes = Changes()
    await settings.watch(["/Settings/Aggbatt/Mode"], changes)
    await first.close()
    second = await start_sim(connect, state_file=state)
    assert await settings.get("/Settings/Aggbatt/Mode") == 1
    second.set_local("/Settings/Aggbatt/Mode", 2)
    await changes.until(lambda: changes.seen)
    assert changes.seen == [("/Settings/Aggbatt/Mode", 2)]


# ----- unavailable, slow, persistent -------------------------------------------------------------


async def test_absent_settings_service_raises_a_clear_error(connect):
    settings = await client(connect, timeout=1.0)
    with pytest.raises(SettingsUnavailable, match="com.victronenergy.settings is not on the bus"):
        await settings.add_settings([SettingSpec("/Settings/Aggbatt/Name", "Bank")])
    with pytest.raises(SettingsUnavailable, match="start localsettings"):
        await settings.get("/Settings/Aggbatt/Name")
    with pytest.raises(SettingsUnavailable):
        await settings.set("/Settings/Aggbatt/Name", "x")
    with pytest.raises(SettingsUnavailable):
        await settings.claim_device_instance("aggregate")


async def test_slow_settings_service_raises_instead_of_hanging(connect):
    await start_sim(connect, delay=0.3, initial={"/Settings/Aggbatt/Name": "Bank"})
    impatient = await client(connect, timeout=0.05)
    with pytest.raises(SettingsUnavailable, match="no answer from com.victronenergy.settings"):
        await impatient.add_settings([SettingSpec("/Settings/Aggbatt/Name", "x")])
    with pytest.raises(SettingsUnavailable, match="within 0.05 s"):
        await impatient.get("/Settings/Aggbatt/Name")
    patient = await client(connect, timeout=2.0)
    assert await patient.get("/Settings/Aggbatt/Name") == "Bank"


async def test_values_persist_across_a_settings_restart(connect, tmp_path):
    state = tmp_path / "settings.json"
    first = await start_sim(connect, state_file=str(state))
    settings = await client(connect)
    await settings.add_settings([SettingSpec("/Settings/Aggbatt/FeedInSaved", -1, -1, 1),
                                 SettingSpec("/Settings/Aggbatt/Name", "Bank")])
    assert await settings.set("/Settings/Aggbatt/FeedInSaved", 1) == 0
    instance = await settings.claim_device_instance("aggregate", preferred=5)
    await first.close()

    second = await start_sim(connect, state_file=str(state))
    assert second.values == {"/Settings/Aggbatt/FeedInSaved": 1, "/Settings/Aggbatt/Name": "Bank",
                             f"{DEVICES}/aggregate/ClassAndVrmInstance": f"battery:{instance}"}
    again = await settings.add_settings([SettingSpec("/Settings/Aggbatt/FeedInSaved", -1, -1, 1)])
    assert again == {"/Settings/Aggbatt/FeedInSaved": 1}
    assert await settings.set("/Settings/Aggbatt/FeedInSaved", 2) == -1  # range survived too
    assert json.loads(state.read_text())["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]


async def test_corrupt_state_file_starts_empty(connect, tmp_path, caplog):
    state = tmp_path / "settings.json"
    state.write_text("{not json")
    sim = await start_sim(connect, state_file=str(state), initial={"/Settings/Aggbatt/Name": "A"})
    assert sim.values == {"/Settings/Aggbatt/Name": "A"}
    assert "unreadable" in caplog.text
