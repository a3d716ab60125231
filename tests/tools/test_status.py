"""`aggbatt status` against the in-process daemon on the private bus, and its printer alone."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from hypothesis import given, settings
from hypothesis import strategies as st

from aggbatt.bus.service import BusItemService
from aggbatt.tools.status import main, notes, render_text
from tests.busclient import aggregate_values, wait_for_values
from tests.daemonharness import running, sim_packs

AGG = "com.victronenergy.battery.aggregate"


@asynccontextmanager
async def systemcalc(bus_address: str, battery: str | None, bms: str | None,
                     multiple_batteries: int | None = None) -> AsyncIterator[None]:
    """A com.victronenergy.system publishing only what status reads (victron-contract §5.5)."""
    bus = await MessageBus(bus_address=bus_address).connect()
    svc = BusItemService(bus, "com.victronenergy.system")
    svc.add_path("/ActiveBatteryService", battery, kind=str)
    svc.add_path("/ActiveBmsService", bms, kind=str)
    svc.add_path("/ActiveBmsInstance", None, kind=int)
    svc.add_path("/Dvcc/Alarms/MultipleBatteries", multiple_batteries, kind=int)
    await svc.register()
    try:
        yield
    finally:
        bus.disconnect()


async def status(bus_address: str, as_json: bool = False, service: str = AGG,
                 timeout: float = 3.0) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await main(bus_address, service, as_json, out, err, timeout)
    return code, out.getvalue(), err.getvalue()


async def test_text_shows_packs_aggregate_limits_and_a_wrong_battery_choice(bus_address, tmp_path):
    async with running(bus_address, tmp_path, sim_packs(280, 100), bank_current=20.0) as h, \
            systemcalc(bus_address, "com.victronenergy.battery/1", "com.victronenergy.battery.sim1"):
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2)
        code, text, err = await status(bus_address)
        assert code == 0, err
        assert "P0" in text and "P1" in text
        assert text.count("online") >= 2
        assert "com.victronenergy.battery.sim1" in text
        assert "charge limit:" in text and "P" in text.split("charge limit:")[1].splitlines()[0]
        assert "SoC strategy:    bms_average" in text
        assert "current source:" in text and "bms_sum" in text
        # Venus uses pack 1 for both: two warnings and how to fix them
        assert "Venus uses com.victronenergy.battery/1 as its battery monitor" in text
        assert "DVCC is controlled by com.victronenergy.battery.sim1" in text
        assert "aggbatt-ctl enable" in text
        assert "Settings > DVCC" in text and "Settings > System setup" in text


async def test_json_matches_what_the_aggregate_publishes(bus_address, tmp_path):
    async with running(bus_address, tmp_path, sim_packs(280, 280), bank_current=10.0) as h:
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2)
        instance = (await aggregate_values(h.client))["/DeviceInstance"]
        async with systemcalc(bus_address, f"com.victronenergy.battery/{instance}", AGG):
            code, out, err = await status(bus_address, as_json=True)
            published = await aggregate_values(h.client)
        assert code == 0, err
        report = json.loads(out)
        assert report["service"] == AGG
        assert {p["id"] for p in report["packs"]} == {"P0", "P1"}
        assert all(p["online"] and p["reason"] is None and p["age"] >= 0 for p in report["packs"])
        # the sim splits 10 A by capacity: 5 A per pack (plus up to 0.05 A noise)
        assert all(abs(p["current"] - 5.0) <= 0.06 for p in report["packs"])
        for path in ("/DeviceInstance", "/ProductName", "/Info/MaxChargeVoltage"):
            assert report["aggregate"][path] == published[path]
        assert report["system"] == {"present": True,
                                    "ActiveBatteryService": f"com.victronenergy.battery/{instance}",
                                    "ActiveBmsService": AGG, "ActiveBmsInstance": None,
                                    "Dvcc/Alarms/MultipleBatteries": None}
        assert report["warnings"] == []  # Venus uses the aggregate: nothing to warn about
        assert report["selection"]["select_as_battery"] is False


async def test_multiple_batteries_alarm_is_explained_as_expected(bus_address, tmp_path):
    async with running(bus_address, tmp_path, sim_packs(280, 280)) as h:
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2)
        instance = (await aggregate_values(h.client))["/DeviceInstance"]
        async with systemcalc(bus_address, f"com.victronenergy.battery/{instance}", AGG,
                              multiple_batteries=1):
            code, text, err = await status(bus_address)
            _, out, _ = await status(bus_address, as_json=True)
    assert code == 0, err
    assert "MultipleBatteries = 1" in text.split("Notes:")[1]
    assert "expected with aggbatt" in text
    report = json.loads(out)
    assert report["system"]["Dvcc/Alarms/MultipleBatteries"] == 1
    assert report["warnings"] == []


def test_multiple_batteries_is_no_note_when_another_bms_controls_dvcc():
    system = {"present": True, "ActiveBmsService": "com.victronenergy.battery.ttyUSB0",
              "Dvcc/Alarms/MultipleBatteries": 1}
    assert notes({"service": AGG}, system) == []
    assert notes({"service": AGG}, {**system, "ActiveBmsService": AGG}) != []
    assert notes({"service": AGG}, {**system, "ActiveBmsService": AGG,
                                    "Dvcc/Alarms/MultipleBatteries": 0}) == []


async def test_offline_pack_shows_its_reason_and_a_warning(bus_address, tmp_path):
    async with running(bus_address, tmp_path, sim_packs(280, 280), bank_current=30.0) as h:
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2)
        h.bank.packs[1].freeze(True)
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOffline"] == 1)
        code, out, _ = await status(bus_address, as_json=True)
        code_text, text, _ = await status(bus_address)
    assert code == 0 and code_text == 0
    report = json.loads(out)
    frozen = next(p for p in report["packs"] if p["id"] == "P1")
    assert frozen["online"] is False and "no value changed" in frozen["reason"]
    assert frozen["age"] > 0.5  # the harness' stale_after
    assert any(w.startswith("1 of 2 pack(s) not online: P1") for w in report["warnings"])
    line = next(x for x in text.splitlines() if x.strip().startswith("P1"))
    assert "offline" in line and "no value changed" in line
    # no com.victronenergy.system on this bus: said, not guessed
    assert any("com.victronenergy.system is not on this bus" in w for w in report["warnings"])


async def test_daemon_not_running(bus_address):
    code, out, err = await status(bus_address)
    assert code == 1 and out == ""
    assert "aggbatt is not running" in err and "aggbatt-ctl start" in err


async def test_a_service_that_is_not_aggbatt(bus_address):
    bus = await MessageBus(bus_address=bus_address).connect()
    svc = BusItemService(bus, AGG)
    svc.add_path("/Soc", 50.0)
    await svc.register()
    try:
        code, _, err = await status(bus_address)
    finally:
        bus.disconnect()
    assert code == 1 and "does not answer GetStatus" in err


async def test_a_hung_daemon_times_out(bus_address):
    bus = await MessageBus(bus_address=bus_address).connect()

    def swallow(msg: Message) -> bool:
        return msg.message_type is MessageType.METHOD_CALL  # handled, never answered

    await bus.request_name(AGG)
    bus.add_message_handler(swallow)
    try:
        code, _, err = await status(bus_address, timeout=0.3)
    finally:
        bus.disconnect()
    assert code == 1 and "did not answer within 0.3 s" in err


async def test_command_line_exit_code_without_daemon(bus_address):
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "aggbatt.cli", "status", "--bus", bus_address, "--json"],
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "not running" in done.stderr


def test_printer_copes_with_missing_keys_garbage_and_new_keys():
    report = {
        "service": AGG, "aggregate": {"/Dc/0/Voltage": "53.2", "/Soc": float("nan"),
                                      "/Alarms/HighVoltage": 2},
        "packs": [{"id": "A", "online": False, "state": "offline", "reason": "service gone",
                   "age": None, "voltage": None, "holds": "CCL 0: AllowToCharge 0, DCL 50 A"},
                  "junk", {"name": 7}],
        "balancing": {"phase": "holding", "next": "2025-07-01"},
        "feedin": {"mode": "holding", "setting": 0},
        "config": None, "warnings": ["something"],
    }
    text = render_text(report)
    assert "balancing: phase=holding, next=2025-07-01" in text
    assert "feedin: mode=holding, setting=0" in text
    assert "HighVoltage=2" in text
    assert "service gone" in text
    assert "its last fresh data still counts: CCL 0: AllowToCharge 0, DCL 50 A" in text
    assert "! something" in text


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["service", "version", "ticks", "aggregate", "packs",
                                        "config", "current_source", "selection", "system",
                                        "warnings", "balancing"]), _json))
def test_printer_never_raises(report):
    assert render_text(report).startswith("aggbatt ")


def test_the_status_command_shares_the_schema_without_loading_the_daemon() -> None:
    """`aggbatt status` on a GX device must not pay for pydantic, the engine or the daemon: the
    schema it shares with the daemon's endpoint is a standard-library module."""
    probe = ("import sys, aggbatt.tools.status; "
             "print(' '.join(m for m in sys.modules if m.startswith(('pydantic', 'aggbatt.core', "
             "'aggbatt.config', 'aggbatt.daemon.main'))))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, timeout=30)
    assert loaded.stdout.strip() == ""
