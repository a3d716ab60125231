"""Simulated serialbattery pack: wire contract (docs/victron-contract.md §4.1), physics, faults."""

from __future__ import annotations

import math

import pytest
from dbus_fast import Message, Variant
from hypothesis import given
from hypothesis import strategies as st

from aggbatt.sim.lfp import LFP_TABLE, ocv, piecewise_linear
from aggbatt.sim.pack import ALARMS, SimPack
from aggbatt.sim.pack_model import PackParams
from tests.busclient import SignalRecorder, get_items, get_value, set_value

MANDATORY = ["/Mgmt/ProcessName", "/Mgmt/ProcessVersion", "/Mgmt/Connection", "/DeviceInstance",
             "/ProductId", "/ProductName", "/FirmwareVersion", "/HardwareVersion", "/Connected",
             "/CustomName", "/Serial"]

# Wire types of victron-contract §4.1 ("d" double, "i" int, "s" string) for the values a valid pack carries.
SERIALBATTERY_TYPES = {
    "/DeviceInstance": "i", "/ProductId": "i", "/ProductName": "s", "/FirmwareVersion": "s",
    "/Connected": "i", "/CustomName": "s", "/Serial": "s", "/State": "i", "/Mode": "i",
    "/DeviceState": "i", "/ConnectionInformation": "s", "/Soc": "d", "/Soh": "d", "/Capacity": "d",
    "/InstalledCapacity": "d", "/ConsumedAmphours": "d", "/CurrentAvg": "d",
    "/Dc/0/Voltage": "d", "/Dc/0/Current": "d", "/Dc/0/Power": "d", "/Dc/0/Temperature": "d",
    "/Info/BatteryLowVoltage": "d", "/Info/MaxChargeVoltage": "d", "/Info/MaxChargeCellVoltage": "d",
    "/Info/MaxChargeCurrent": "d", "/Info/MaxDischargeCurrent": "d", "/Info/ChargeMode": "s",
    "/System/NrOfCellsPerBattery": "i", "/System/NrOfModulesOnline": "i",
    "/System/NrOfModulesOffline": "i", "/System/NrOfModulesBlockingCharge": "i",
    "/System/NrOfModulesBlockingDischarge": "i", "/System/MinCellVoltage": "d",
    "/System/MaxCellVoltage": "d", "/System/MinVoltageCellId": "s", "/System/MaxVoltageCellId": "s",
    "/System/MinCellTemperature": "d", "/System/MaxCellTemperature": "d",
    "/Io/AllowToCharge": "i", "/Io/AllowToDischarge": "i", "/Io/AllowToBalance": "i",
    "/Balancing": "i", "/Voltages/Sum": "d", "/Voltages/Diff": "d",
    "/History/TotalAhDrawn": "d", "/History/ChargeCycles": "d", "/History/MinimumCellVoltage": "d",
    "/History/MaximumCellVoltage": "d", "/History/ChargedEnergy": "d",
    "/Settings/HasTemperature": "i",
}


@pytest.fixture
async def started(bus_address):
    """Start SimPacks on the private bus; all are stopped after the test."""
    sims: list[SimPack] = []

    async def _start(params: PackParams | None = None, suffix: str = "t1") -> SimPack:
        pack = SimPack(params or PackParams(), name_suffix=suffix)
        await pack.start(bus_address)
        sims.append(pack)
        return pack

    yield _start
    for sim in sims:
        await sim.stop()


def value(items, path):
    return items[path]["Value"]


async def name_owner(bus, name: str) -> str | None:
    reply = await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                   interface="org.freedesktop.DBus", member="GetNameOwner",
                                   signature="s", body=[name]))
    return reply.body[0] if reply.message_type.name == "METHOD_RETURN" else None


# ----- the curve ------------------------------------------------------------------------------------


def test_lfp_curve_shape():
    assert ocv(0.0) == pytest.approx(2.5, abs=0.05)
    assert 3.2 <= ocv(0.5) <= 3.3
    assert 3.45 <= ocv(1.0) <= 3.6
    assert ocv(-1.0) == ocv(0.0) and ocv(2.0) == ocv(1.0)


@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_lfp_curve_is_monotonic(a, b):
    low, high = min(a, b), max(a, b)
    assert ocv(low) <= ocv(high)


def test_curve_is_pluggable():
    flat = piecewise_linear(((0.0, 2.0), (1.0, 3.0)))
    pack = SimPack(PackParams(cells=4, soc=50.0, ocv=flat), name_suffix="lto")
    assert pack.cell_voltages == pytest.approx([2.5] * 4)
    with pytest.raises(ValueError):
        piecewise_linear(((0.0, 1.0), (0.0, 2.0)))


# ----- physics (no bus) -------------------------------------------------------------------------------


def test_soc_integrates_current_exactly():
    pack = SimPack(PackParams(capacity_ah=280.0, soc=50.0), name_suffix="x")
    for _ in range(3600):
        pack.step(1.0, 28.0)  # 28 Ah into 280 Ah = +10 %
    assert pack.soc == pytest.approx(60.0, abs=1e-9)
    pack.step(1800.0, -56.0)  # 28 Ah out
    assert pack.soc == pytest.approx(50.0, abs=1e-9)


def test_charging_raises_soc_and_cells_and_ir_drop():
    pack = SimPack(PackParams(cells=16, soc=50.0, internal_resistance=0.002), name_suffix="x")
    rest = list(pack.cell_voltages)
    pack.step(1.0, 50.0)
    assert pack.soc > 50.0
    assert all(v > r for v, r in zip(pack.cell_voltages, rest, strict=True))
    # I*R on every cell: 50 A * 2 mOhm = 0.1 V per cell, 1.6 V over 16 cells (plus the tiny SoC rise).
    assert sum(pack.cell_voltages) - sum(rest) == pytest.approx(1.6, abs=0.01)


@given(st.floats(0.0, 100.0))
def test_resting_cells_lie_on_the_curve(soc):
    pack = SimPack(PackParams(cells=8, soc=soc), name_suffix="x")
    lowest, highest = LFP_TABLE[0][1], LFP_TABLE[-1][1]
    assert all(lowest <= v <= highest for v in pack.cell_voltages)
    assert pack.cell_voltages == pytest.approx([ocv(soc / 100.0)] * 8)


def test_soc_stays_within_0_and_100():
    pack = SimPack(PackParams(soc=99.0, capacity_ah=10.0, max_cell_voltage=3.7), name_suffix="x")
    pack.step(3600.0, 20.0)
    assert pack.soc == 100.0
    pack = SimPack(PackParams(soc=1.0, capacity_ah=10.0, min_cell_voltage=2.0), name_suffix="x")
    pack.step(3600.0, -20.0)
    assert pack.soc == 0.0


def test_limits_taper_like_serialbattery():
    pack = SimPack(PackParams(soc=50.0), name_suffix="x")
    assert (pack.cvl, pack.ccl, pack.dcl) == pytest.approx((16 * 3.45, 100.0, 150.0))
    pack.set_temperature(1.0)  # halfway between 0 °C (0 %) and 2 °C (10 %) of the charge taper
    assert pack.ccl == pytest.approx(5.0)
    near_empty = SimPack(PackParams(soc=10.0), name_suffix="x")
    assert near_empty.dcl == pytest.approx(150.0 * 0.2)  # DCL taper: 20 % at 10 % SoC
    near_full = SimPack(PackParams(soc=95.0), name_suffix="x")
    assert near_full.ccl == pytest.approx(100.0 * 0.5)  # CCL taper: 50 % at 95 % SoC


def test_cell_over_voltage_blocks_charge_until_the_cell_settles_below_max():
    pack = SimPack(PackParams(soc=99.0, capacity_ah=280.0), name_suffix="x")
    assert pack.allow_charge  # resting 3.475 V: below the 3.55 V cut-off
    pack.step(1.0, 50.0)  # +0.1 V I*R: 3.575 V, beyond max_cell_voltage + 0.1
    assert not pack.allow_charge and pack.ccl == 0.0
    soc = pack.soc
    pack.step(10.0, 50.0)
    assert pack.current == 0.0 and pack.soc == soc  # charge FET open
    assert not pack.allow_charge  # resting again, but still above 3.45 V: cut-off holds
    pack.step(60.0, -10.0)  # 1/6 Ah out: 98.94 %, 3.471 V resting - 0.02 V I*R = 3.451 V
    assert not pack.allow_charge
    pack.step(60.0, -10.0)  # 98.89 %: 3.466 V - 0.02 V, under 3.45 V
    assert pack.allow_charge


def test_float_after_absorption_lowers_cvl():
    pack = SimPack(PackParams(soc=97.0, absorption_seconds=30.0), name_suffix="x")
    pack.step(1.0, 20.0)  # 3.383 V + 0.04 V: not yet within 10 mV of 3.45 V
    assert pack.charge_mode == "Bulk"
    pack.step(1.0, 40.0)  # 3.383 V + 0.08 V
    assert pack.charge_mode == "Absorption"
    for _ in range(30):
        pack.step(1.0, 5.0)
    assert pack.charge_mode == "Float"
    assert pack.cvl == pytest.approx(16 * 3.375)


# ----- on the bus -------------------------------------------------------------------------------------


async def test_get_items_has_the_serialbattery_paths_and_types(started, connect):
    pack = await started(PackParams(cells=16, device_instance=7, serial="ABC123", custom_name="Left"))
    items = await get_items(await connect(), "com.victronenergy.battery.t1")
    for path in MANDATORY:
        assert path in items, path
    for path, sig in SERIALBATTERY_TYPES.items():
        assert value(items, path).signature == sig, path
    for name in ALARMS:
        assert value(items, f"/Alarms/{name}").signature == "i", name
    assert len(ALARMS) == 17
    for n in range(1, 17):
        cell = value(items, f"/Voltages/Cell{n}")
        assert cell.signature == "d" and cell.value == round(cell.value, 3)
        assert value(items, f"/Balances/Cell{n}").signature == "i"
    assert "/Voltages/Cell17" not in items
    assert value(items, "/DeviceInstance") == Variant("i", 7)
    assert value(items, "/ProductId") == Variant("i", 0xBA77)
    assert items["/ProductId"]["Text"].value == "0xBA77"
    assert "SerialBattery" in value(items, "/ProductName").value
    assert value(items, "/Serial") == Variant("s", "ABC123")
    assert value(items, "/CustomName") == Variant("s", "Left")
    assert value(items, "/ConnectionInformation") == Variant("s", "Connected")
    assert value(items, "/Info/MaxChargeVoltage") == Variant("d", 55.2)
    assert value(items, "/Info/MaxChargeCurrent") == Variant("d", 100.0)
    assert value(items, "/Info/MaxDischargeCurrent") == Variant("d", 150.0)
    assert value(items, "/System/NrOfModulesOnline") == Variant("i", 1)
    assert value(items, "/Io/AllowToCharge") == Variant("i", 1)
    voltage = value(items, "/Dc/0/Voltage").value
    assert voltage == round(voltage, 2) and voltage == pytest.approx(16 * ocv(0.5), abs=0.01)
    assert value(items, "/InstalledCapacity") == Variant("d", 280.0)
    assert value(items, "/ConsumedAmphours") == Variant("d", -140.0)
    assert value(items, "/TimeToGo").signature == "ai"  # |I| <= 0.1 A: invalid
    assert pack.unique_name and pack.unique_name.startswith(":")


async def test_custom_name_is_writeable(started, connect):
    pack = await started()
    client = await connect()
    assert await set_value(client, pack.service_name, "/CustomName", Variant("s", "Rack 2")) == 0
    assert pack.custom_name == "Rack 2"
    pack.step(1.0, 5.0)
    pack.publish()
    assert await get_value(client, pack.service_name, "/CustomName") == Variant("s", "Rack 2")
    assert await set_value(client, pack.service_name, "/Soc", Variant("d", 1.0)) == 1


async def test_publish_sends_properties_changed_per_changed_path(started, connect):
    pack = await started()
    client = await connect()
    rec = await SignalRecorder(client).start(pack.service_name)
    pack.step(1.0, 20.0)
    sent = pack.publish()
    assert sent > 0
    await rec.wait_for(lambda: len(rec.of("PropertiesChanged")) >= sent)
    await get_items(client, pack.service_name)  # round trip: everything sent before is in
    props = {m.path: m.body[0]["Value"] for m in rec.of("PropertiesChanged")}
    assert len(rec.of("PropertiesChanged")) == sent
    assert rec.of("ItemsChanged") == []
    assert props["/Dc/0/Current"] == Variant("d", 20.0)
    assert "/ProductName" not in props
    assert pack.publish() == 0


async def test_history_and_time_to_go_change_once_a_minute_like_serialbattery(started, connect):
    # serialbattery publishes every poll but recomputes these once a minute; CurrentAvg is the
    # mean of the last 300 measured currents, so it moves with the current's noise.
    pack = await started(PackParams(noise_a=0.05))
    client = await connect()
    items = await get_items(client, pack.service_name)
    for path in ("/History/LastDischarge", "/History/AverageDischarge", "/History/FullDischarges",
                 "/History/AutomaticSyncs", "/History/LowVoltageAlarms",
                 "/History/HighVoltageAlarms", "/History/Clear", "/Info/ChargeModeDebugFloat",
                 "/Info/ChargeModeDebugBulk"):
        assert path in items, path
    rec = await SignalRecorder(client).start(pack.service_name)
    slow = ("/TimeToGo", "/History/ChargedEnergy", "/History/MaximumVoltage")
    for _ in range(59):
        pack.step(1.0, 20.0)
        pack.publish()
    await get_items(client, pack.service_name)  # round trip: everything sent before is in
    changed = {m.path for m in rec.of("PropertiesChanged")}
    assert changed.isdisjoint(slow)
    assert "/CurrentAvg" in changed
    pack.step(1.0, 20.0)
    pack.publish()
    await get_items(client, pack.service_name)
    changed = {m.path for m in rec.of("PropertiesChanged")}
    assert set(slow) <= changed


async def test_freeze_stops_signals_but_keeps_the_name(started, connect):
    pack = await started()
    client = await connect()
    rec = await SignalRecorder(client).start(pack.service_name)
    pack.freeze()
    pack.step(5.0, 40.0)
    assert pack.publish() == 0
    await get_items(client, pack.service_name)
    assert rec.signals == []
    assert await name_owner(client, pack.service_name) == pack.unique_name
    assert await get_value(client, pack.service_name, "/Dc/0/Current") == Variant("d", 0.0)
    pack.freeze(False)
    assert pack.publish() > 0
    await rec.wait_for(lambda: any(m.path == "/Dc/0/Current" for m in rec.signals))


async def test_vanish_and_reappear_changes_the_unique_name(started, connect):
    pack = await started()
    client = await connect()
    first = pack.unique_name
    await pack.vanish()
    assert pack.unique_name is None and not pack.online and pack.publish() == 0
    assert await name_owner(client, pack.service_name) is None
    await pack.reappear()
    assert pack.online and pack.unique_name not in (None, first)
    assert await name_owner(client, pack.service_name) == pack.unique_name
    items = await get_items(client, pack.service_name)
    assert "/Voltages/Cell16" in items


async def test_link_lost_invalidates_measurements_and_holds_limits(started, connect):
    pack = await started()
    client = await connect()
    pack.step(1.0, 30.0)
    pack.publish()
    pack.link_lost()
    pack.set_temperature(1.0)  # would cut CCL to 5 A if the BMS could still report
    pack.step(1.0, 30.0)
    pack.publish()
    items = await get_items(client, pack.service_name)
    for path in ("/Dc/0/Voltage", "/Dc/0/Current", "/Dc/0/Power"):
        assert value(items, path).signature == "ai" and value(items, path).value == [], path
    assert value(items, "/System/NrOfModulesOnline") == Variant("i", 0)
    assert value(items, "/System/NrOfModulesOffline") == Variant("i", 1)
    assert value(items, "/Info/MaxChargeVoltage") == Variant("d", 55.2)
    assert value(items, "/Info/MaxChargeCurrent") == Variant("d", 100.0)
    assert value(items, "/Alarms/BmsCable") == Variant("i", 0)
    pack.step(60.0, 0.0)
    pack.publish()
    assert await get_value(client, pack.service_name, "/Alarms/BmsCable") == Variant("i", 1)
    pack.link_lost(False)
    pack.publish()
    items = await get_items(client, pack.service_name)
    assert value(items, "/Info/MaxChargeCurrent") == Variant("d", 5.0)
    assert value(items, "/System/NrOfModulesOnline") == Variant("i", 1)
    assert value(items, "/Dc/0/Voltage").signature == "d"


async def test_block_charge(started, connect):
    pack = await started()
    client = await connect()
    pack.block_charge()
    pack.publish()
    items = await get_items(client, pack.service_name)
    assert value(items, "/Info/MaxChargeCurrent") == Variant("d", 0.0)
    assert value(items, "/Io/AllowToCharge") == Variant("i", 0)
    assert value(items, "/System/NrOfModulesBlockingCharge") == Variant("i", 1)
    assert value(items, "/Io/AllowToDischarge") == Variant("i", 1)
    assert value(items, "/System/NrOfModulesBlockingDischarge") == Variant("i", 0)
    soc = pack.soc
    pack.step(10.0, 50.0)
    assert pack.current == 0.0 and pack.soc == soc
    pack.step(10.0, -50.0)
    assert pack.soc < soc
    pack.block_charge(False)
    pack.block_discharge()
    pack.publish()
    items = await get_items(client, pack.service_name)
    assert value(items, "/Info/MaxDischargeCurrent") == Variant("d", 0.0)
    assert value(items, "/Io/AllowToDischarge") == Variant("i", 0)
    assert value(items, "/System/NrOfModulesBlockingDischarge") == Variant("i", 1)
    assert value(items, "/Io/AllowToCharge") == Variant("i", 1)


async def test_drift_cell_moves_max_and_min_cell(started, connect):
    pack = await started()
    client = await connect()
    rest = ocv(0.5)
    pack.drift_cell(5, 50.0)
    pack.drift_cell(9, -30.0)
    pack.publish()
    items = await get_items(client, pack.service_name)
    assert value(items, "/System/MaxVoltageCellId") == Variant("s", "C5")
    assert value(items, "/System/MaxCellVoltage").value == pytest.approx(rest + 0.05, abs=1e-3)
    assert value(items, "/System/MinVoltageCellId") == Variant("s", "C9")
    assert value(items, "/System/MinCellVoltage").value == pytest.approx(rest - 0.03, abs=1e-3)
    assert value(items, "/Voltages/Diff").value == pytest.approx(0.08, abs=1e-3)
    assert value(items, "/Voltages/Cell5").value == pytest.approx(rest + 0.05, abs=1e-3)
    with pytest.raises(ValueError):
        pack.drift_cell(17, 10.0)


async def test_override_publishes_garbage_and_can_be_removed(started, connect):
    pack = await started()
    client = await connect()
    rec = await SignalRecorder(client).start(pack.service_name)
    pack.set_override("/Dc/0/Voltage", "garbage")
    pack.publish()
    assert await get_value(client, pack.service_name, "/Dc/0/Voltage") == Variant("s", "garbage")
    await rec.wait_for(lambda: any(m.path == "/Dc/0/Voltage" for m in rec.signals))
    signal = next(m for m in rec.signals if m.path == "/Dc/0/Voltage")
    assert signal.body[0]["Value"] == Variant("s", "garbage")
    pack.set_override("/Info/MaxChargeCurrent", math.nan)
    pack.set_override("/Soc", 1000.0)
    pack.publish()
    nan = await get_value(client, pack.service_name, "/Info/MaxChargeCurrent")
    assert nan.signature == "d" and math.isnan(nan.value)
    assert await get_value(client, pack.service_name, "/Soc") == Variant("d", 1000.0)
    pack.set_override("/Dc/0/Voltage", None)
    pack.publish()
    restored = await get_value(client, pack.service_name, "/Dc/0/Voltage")
    assert restored.signature == "d" and restored.value == pytest.approx(16 * ocv(0.5), abs=0.01)
    with pytest.raises(KeyError):
        pack.set_override("/No/Such", 1)


async def test_invalidate_a_path(started, connect):
    pack = await started()
    client = await connect()
    pack.invalidate("/Soc")
    pack.publish()
    assert (await get_value(client, pack.service_name, "/Soc")).value == []
    pack.invalidate("/Soc", False)
    pack.publish()
    assert await get_value(client, pack.service_name, "/Soc") == Variant("d", 50.0)


async def test_temperature_excursion(started, connect):
    pack = await started()
    client = await connect()
    pack.set_temperature(61.0)
    pack.publish()
    items = await get_items(client, pack.service_name)
    assert value(items, "/Alarms/HighTemperature") == Variant("i", 2)
    assert value(items, "/Info/MaxChargeCurrent") == Variant("d", 0.0)  # above 55 °C: no charging
    assert value(items, "/Io/AllowToCharge") == Variant("i", 0)
    assert value(items, "/Dc/0/Temperature") == Variant("d", 61.0)


async def test_pack_without_temperature_sensor(started, connect):
    pack = await started(PackParams(has_temperature=False))
    items = await get_items(await connect(), pack.service_name)
    assert value(items, "/Dc/0/Temperature").value == []
    assert value(items, "/Settings/HasTemperature") == Variant("i", 0)


def test_default_device_instances_are_distinct():
    a = SimPack(PackParams(), name_suffix="a")
    b = SimPack(PackParams(), name_suffix="b")
    assert a.device_instance != b.device_instance
    assert SimPack(PackParams(device_instance=3), name_suffix="c").device_instance == 3


def test_params_are_validated():
    with pytest.raises(ValueError):
        PackParams(cells=4, cell_offsets_mv=[0.0, 1.0])
    with pytest.raises(ValueError):
        PackParams(capacity_ah=0.0)
