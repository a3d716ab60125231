"""bus/monitor.py against real services on a private dbus-daemon (docs/victron-contract.md §2 and §6.2)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import shutil
import signal
import subprocess
import threading

import pytest
from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

from aggbatt.bus import scanner as scanner_module
from aggbatt.bus.monitor import Monitor, RemoteService
from aggbatt.bus.scanner import Scanner
from aggbatt.bus.service import BusItemService
from aggbatt.bus.values import unwrap
from aggbatt.sim.bank import SimBank
from tests.busclient import eventually, get_items, until

BUSITEM = "com.victronenergy.BusItem"
DBUS = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
BATTERY_PATHS = ("/Dc/0/Voltage", "/Dc/0/Current", "/Soc")
LOGGER = "aggbatt.bus.monitor"


def battery_name(suffix: str) -> str:
    return f"com.victronenergy.battery.{suffix}"


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Events:
    """Records the monitor's callbacks; `until` waits (bounded) for a condition on them."""

    def __init__(self) -> None:
        self.added: list[RemoteService] = []
        self.removed: list[RemoteService] = []
        self.changed: list[tuple[str, dict]] = []
        self._event = asyncio.Event()

    def on_added(self, service: RemoteService) -> None:
        self.added.append(service)
        self._event.set()

    def on_removed(self, service: RemoteService) -> None:
        self.removed.append(service)
        self._event.set()

    def on_changed(self, service: RemoteService, changes) -> None:
        self.changed.append((service.name, dict(changes)))
        self._event.set()

    async def until(self, predicate, timeout: float = 3.0) -> None:
        await until(self._event, predicate, timeout)


async def publish_battery(connect, suffix: str, *, instance=1, voltage: float = 52.0,
                          signals: str = "both", cells: int = 1) -> BusItemService:
    svc = BusItemService(await connect(), battery_name(suffix), signals=signals)
    if instance != "absent":
        svc.add_path("/DeviceInstance", instance, kind=int)
    svc.add_path("/Dc/0/Voltage", voltage, kind=float, decimals=2)
    svc.add_path("/Dc/0/Current", 1.5, kind=float, decimals=2)
    svc.add_path("/Soc", 80.0, kind=float)
    for n in range(1, cells + 1):
        svc.add_path(f"/Voltages/Cell{n}", 3.3, kind=float, decimals=3)
    svc.add_path("/ProductName", "SerialBattery(LLT/JBD)", kind=str)
    await svc.register()
    return svc


async def start_monitor(connect, events: Events, classes=None, **kwargs) -> Monitor:
    kwargs.setdefault("call_timeout", 2.0)
    kwargs.setdefault("retry_delay", 0.05)
    monitor = Monitor(await connect(), classes or {"battery": BATTERY_PATHS},
                      on_added=events.on_added, on_removed=events.on_removed,
                      on_changed=events.on_changed, **kwargs)
    await monitor.start()
    return monitor


async def match_rules(bus: MessageBus) -> int:
    """Match rules the bus daemon holds for `bus`, asked on `bus` itself so earlier
    fire-and-forget RemoveMatch calls are processed first."""
    reply = await asyncio.wait_for(bus.call(Message(
        destination=DBUS, path=DBUS_PATH, interface="org.freedesktop.DBus.Debug.Stats",
        member="GetConnectionStats", signature="s", body=[bus.unique_name])), 3)
    if reply.message_type is MessageType.ERROR:
        pytest.skip("this dbus-daemon has no Debug.Stats interface")
    return reply.body[0]["MatchRules"].value


def raw_signal(path: str, member: str, signature: str, body) -> Message:
    return Message(message_type=MessageType.SIGNAL, path=path, interface=BUSITEM, member=member,
                   signature=signature, body=[body], flags=MessageFlag.NO_REPLY_EXPECTED)


async def raw_service(connect, name: str, answer) -> MessageBus:
    """A service with a hand-written handler: answer(msg, bus) returns the handler's result."""
    bus = await connect()
    bus.add_message_handler(lambda msg: answer(msg, bus)
                            if msg.message_type is MessageType.METHOD_CALL else None)
    await bus.request_name(name)
    return bus


def warnings_about(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno >= logging.WARNING and text in r.getMessage()]


# ----- discovery ---------------------------------------------------------------------------------


async def test_discovers_services_present_before_and_appearing_after_start(connect):
    clock, events = Clock(100.0), Events()
    a = await publish_battery(connect, "a", instance=3, voltage=51.5)
    monitor = await start_monitor(connect, events, clock=clock)

    assert list(monitor.services) == [battery_name("a")]
    record = monitor.services[battery_name("a")]
    assert record.owner == a.bus.unique_name
    assert record.service_class == "battery"
    assert record.device_instance == 3
    # Only the wanted paths are kept: no cells, no product name.
    assert record.values == {"/Dc/0/Voltage": 51.5, "/Dc/0/Current": 1.5, "/Soc": 80.0}
    assert record.changed_at == dict.fromkeys(BATTERY_PATHS, 100.0)
    assert record.appeared_at == 100.0 and record.last_change == 100.0
    assert record.get("/Soc") == 80.0 and record.get("/Voltages/Cell1", "none") == "none"
    assert [s.name for s in events.added] == [battery_name("a")]

    clock.t = 105.0
    b = await publish_battery(connect, "b", instance=4)
    await events.until(lambda: len(events.added) == 2)
    assert events.added[1].name == battery_name("b")
    assert events.added[1].owner == b.bus.unique_name
    assert events.added[1].appeared_at == 105.0
    assert sorted(s.name for s in monitor.of_class("battery")) == [battery_name("a"), battery_name("b")]
    assert monitor.of_class("vebus") == []


async def test_class_filter_and_own_name(connect):
    events = Events()
    vebus = BusItemService(await connect(), "com.victronenergy.vebus.ttyS3")
    vebus.add_path("/DeviceInstance", 276, kind=int)
    vebus.add_path("/Dc/0/Voltage", 52.1, kind=float)
    await vebus.register()
    await publish_battery(connect, "aggregate", instance=9)
    await publish_battery(connect, "x", instance=1)
    monitor = await start_monitor(connect, events, ignore={battery_name("aggregate")})
    assert list(monitor.services) == [battery_name("x")]

    # Appearing later: the same filter applies. The battery is the barrier for the vebus.
    vebus2 = BusItemService(await connect(), "com.victronenergy.vebus.ttyS4")
    vebus2.add_path("/DeviceInstance", 277, kind=int)
    await vebus2.register()
    await publish_battery(connect, "y", instance=2)
    await events.until(lambda: len(events.added) == 2)
    assert sorted(monitor.services) == [battery_name("x"), battery_name("y")]

    # A class added at runtime is discovered at once.
    await monitor.set_paths("vebus", ["/Dc/0/Voltage"])
    assert sorted(s.name for s in monitor.of_class("vebus")) == [
        "com.victronenergy.vebus.ttyS3", "com.victronenergy.vebus.ttyS4"]
    assert monitor.services["com.victronenergy.vebus.ttyS3"].values == {"/Dc/0/Voltage": 52.1}
    assert battery_name("aggregate") not in monitor.services


# ----- values and change detection ---------------------------------------------------------------


async def test_one_change_sent_as_items_and_properties_changed_is_processed_once(connect):
    clock, events = Clock(), Events()
    svc = await publish_battery(connect, "dup", signals="both")
    monitor = await start_monitor(connect, events, clock=clock)
    clock.t = 200.0
    svc["/Dc/0/Voltage"] = 50.0
    svc.publish()
    clock_at_change = clock.t
    await events.until(lambda: events.changed)
    clock.t = 201.0
    svc["/Soc"] = 81.0
    svc.publish()
    await events.until(lambda: any("/Soc" in c for _, c in events.changed))
    # The second signal of a publish may still be on its way when the first one is handled, and
    # a duplicate changes nothing, so no event tells when it has arrived.
    await eventually(lambda: monitor.signals_received >= 4)

    # Two publishes, each as ItemsChanged + PropertiesChanged: four signals, two changes.
    assert monitor.signals_received == 4
    assert events.changed == [(battery_name("dup"), {"/Dc/0/Voltage": 50.0}),
                              (battery_name("dup"), {"/Soc": 81.0})]
    record = monitor.services[battery_name("dup")]
    assert record.changed_at["/Dc/0/Voltage"] == clock_at_change
    assert record.last_change == 201.0


async def test_unchanged_value_does_not_bump_changed_at(connect):
    clock, events = Clock(100.0), Events()
    svc = await publish_battery(connect, "same", voltage=52.0)
    monitor = await start_monitor(connect, events, clock=clock)
    clock.t = 300.0
    # The same voltage again, once as a double and once as an integer (readers accept i and d).
    svc.bus.send(raw_signal("/Dc/0/Voltage", "PropertiesChanged", "a{sv}",
                            {"Value": Variant("d", 52.0), "Text": Variant("s", "52.00")}))
    svc.bus.send(raw_signal("/", "ItemsChanged", "a{sa{sv}}",
                            {"/Dc/0/Voltage": {"Value": Variant("i", 52), "Text": Variant("s", "52")}}))
    svc["/Soc"] = 79.0
    svc.publish()
    await events.until(lambda: events.changed)
    record = monitor.services[battery_name("same")]
    assert events.changed == [(battery_name("same"), {"/Soc": 79.0})]
    assert record.changed_at["/Dc/0/Voltage"] == 100.0
    assert record.changed_at["/Soc"] == 300.0
    assert record.last_change == 300.0


async def test_invalid_value_is_stored_as_none(connect):
    events = Events()
    svc = await publish_battery(connect, "inv")
    monitor = await start_monitor(connect, events)
    svc["/Dc/0/Current"] = None
    svc.publish()
    await events.until(lambda: events.changed)
    assert events.changed == [(battery_name("inv"), {"/Dc/0/Current": None})]
    record = monitor.services[battery_name("inv")]
    assert record.values["/Dc/0/Current"] is None
    assert record.get("/Dc/0/Current", -1.0) == -1.0


async def test_unwanted_paths_are_filtered_by_the_bus_daemon(connect):
    events, everything = Events(), Events()
    svc = await publish_battery(connect, "cells", signals="properties", cells=16)
    monitor = await start_monitor(connect, events)
    # A second monitor that wants all paths sees what the per-path rules keep away.
    greedy = await start_monitor(connect, everything, classes={"battery": None})
    assert await match_rules(monitor.bus) == 1 + 1 + len(BATTERY_PATHS)
    assert await match_rules(greedy.bus) == 1 + 2

    for step in range(5):
        for cell in range(1, 17):
            svc[f"/Voltages/Cell{cell}"] = 3.3 + 0.001 * (step + 1)
        svc.publish()
    svc["/Dc/0/Voltage"] = 53.0
    svc.publish()
    await events.until(lambda: events.changed)
    await everything.until(lambda: any("/Dc/0/Voltage" in c for _, c in everything.changed))

    assert monitor.signals_received == 1
    assert events.changed == [(battery_name("cells"), {"/Dc/0/Voltage": 53.0})]
    assert greedy.signals_received == 5 * 16 + 1


async def test_what_is_kept_of_a_service_listing_too_many_paths_is_capped(connect, caplog):
    caplog.set_level(logging.INFO, LOGGER)
    svc = await publish_battery(connect, "crowded", cells=30)
    listed = len(list(svc.paths()))
    wanting, greedy = Events(), Events()
    monitor = await start_monitor(connect, wanting, max_paths=20)
    everything = await start_monitor(connect, greedy, classes={"battery": None}, max_paths=20)

    # The wanted paths are read whatever the service lists.
    assert monitor.services[battery_name("crowded")].values == {
        "/Dc/0/Voltage": 52.0, "/Dc/0/Current": 1.5, "/Soc": 80.0}
    # A class followed in full keeps max_paths of them; new paths from signals are ignored too.
    kept = everything.services[battery_name("crowded")].values
    assert len(kept) == 20
    svc.add_path("/Extra/New", 1, kind=int)
    svc["/Soc"] = 79.0
    svc.publish()
    await greedy.until(lambda: greedy.changed)
    assert greedy.changed == [(battery_name("crowded"), {"/Soc": 79.0})]
    assert len(kept) == 20 and "/Extra/New" not in kept
    lines = warnings_about(caplog, battery_name("crowded"))
    assert len(lines) == 2  # once per monitor
    assert all(f"lists {listed} paths" in line for line in lines)


# ----- vanish and reappear -----------------------------------------------------------------------


async def test_vanish_drops_the_service_and_reappearance_rescans(connect):
    events = Events()
    first = await publish_battery(connect, "v", voltage=51.0)
    monitor = await start_monitor(connect, events)
    first_owner = first.bus.unique_name
    first.bus.disconnect()
    await events.until(lambda: events.removed)
    assert events.removed[0].owner == first_owner
    assert monitor.services == {}
    assert events.removed[0].values == {}
    assert await match_rules(monitor.bus) == 1

    second = await publish_battery(connect, "v", voltage=49.0)
    await events.until(lambda: len(events.added) == 2)
    record = monitor.services[battery_name("v")]
    assert record.owner == second.bus.unique_name != first_owner
    assert record.values["/Dc/0/Voltage"] == 49.0
    second["/Soc"] = 50.0
    second.publish()
    await events.until(lambda: events.changed)
    assert events.changed == [(battery_name("v"), {"/Soc": 50.0})]


async def test_quick_restart_ends_with_the_new_owner(connect):
    events = Events()
    first = await publish_battery(connect, "q")
    monitor = await start_monitor(connect, events)
    owners = [first.bus.unique_name]
    for _ in range(3):
        first.bus.disconnect()
        first = await publish_battery(connect, "q")
        owners.append(first.bus.unique_name)
    # Intermediate owners may vanish before their scan ends: they are never announced.
    await events.until(lambda: events.added and events.added[-1].owner == owners[-1])
    assert list(monitor.services) == [battery_name("q")]
    assert monitor.services[battery_name("q")].owner == owners[-1]
    added = [s.owner for s in events.added]
    assert [s.owner for s in events.removed] == added[:-1]
    assert set(added) <= set(owners)
    assert await match_rules(monitor.bus) == 1 + 1 + len(BATTERY_PATHS)


async def test_close_removes_every_match_rule(connect):
    events = Events()
    await publish_battery(connect, "c1")
    await publish_battery(connect, "c2")
    monitor = await start_monitor(connect, events)
    assert await match_rules(monitor.bus) == 1 + 2 * (1 + len(BATTERY_PATHS))
    await monitor.close()
    assert await match_rules(monitor.bus) == 0
    assert monitor.services == {}


# ----- misbehaving services ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["wrong signature", "error reply"])
async def test_get_items_garbage_is_retried_with_back_off_until_it_answers(connect, caplog, kind):
    caplog.set_level(logging.INFO, LOGGER)
    calls = []
    called = asyncio.Event()
    broken = True

    def answer(msg: Message, bus: MessageBus):
        if msg.member != "GetItems":
            return None
        calls.append(msg)
        called.set()
        if not broken:
            return Message.new_method_return(msg, "a{sa{sv}}", [
                {"/DeviceInstance": {"Value": Variant("i", 7)}, "/Soc": {"Value": Variant("d", 40.0)}}])
        if kind == "wrong signature":
            return Message.new_method_return(msg, "s", ["garbage"])
        return Message.new_error(msg, "com.example.Error.Broken", "broken on purpose")

    await raw_service(connect, battery_name("garbage"), answer)
    await publish_battery(connect, "good")
    events = Events()
    monitor = await start_monitor(connect, events, retry_delay=0.05, retry_max=0.2)

    assert list(monitor.services) == [battery_name("good")]
    assert [s.name for s in events.added] == [battery_name("good")]
    lines = warnings_about(caplog, battery_name("garbage"))
    assert len(lines) == 1
    assert ("signature 's'" if kind == "wrong signature" else "com.example.Error.Broken") in lines[0]
    # While it fails it holds no match rules.
    assert await match_rules(monitor.bus) == 1 + 1 + len(BATTERY_PATHS)
    await until(called, lambda: len(calls) >= 4, 3.0)
    [waiting] = monitor.unanswered()
    assert waiting.name == battery_name("garbage") and waiting.attempts >= 3
    assert len(warnings_about(caplog, battery_name("garbage"))) == 1

    broken = False
    await events.until(lambda: len(events.added) == 2)
    assert monitor.services[battery_name("garbage")].values == {"/Soc": 40.0}
    assert monitor.unanswered() == []
    assert len(warnings_about(caplog, battery_name("garbage"))) == 1
    assert any("answers now" in r.getMessage() for r in caplog.records
               if battery_name("garbage") in r.getMessage())
    # Once it answers, no more scans are made.
    made = len(calls)
    await asyncio.sleep(0.3)
    assert len(calls) == made


async def test_a_service_that_leaves_while_retried_is_no_longer_retried(connect, caplog):
    caplog.set_level(logging.INFO, LOGGER)
    broken = await raw_service(connect, battery_name("flaky"), lambda msg, bus: (
        Message.new_error(msg, "com.example.Error.Busy", "busy") if msg.member == "GetItems" else None))
    events = Events()
    monitor = await start_monitor(connect, events, retry_delay=0.05, retry_max=0.05)
    assert [u.name for u in monitor.unanswered()] == [battery_name("flaky")]

    broken.disconnect()
    await broken.wait_for_disconnect()
    for _ in range(50):
        if not monitor.unanswered():
            break
        await asyncio.sleep(0.02)
    assert monitor.unanswered() == []
    # The same name from a new driver that answers is followed at once.
    await publish_battery(connect, "flaky")
    await events.until(lambda: events.added)
    assert monitor.services[battery_name("flaky")].values["/Soc"] == 80.0
    assert any("left the bus before its scan succeeded" in r.getMessage() for r in caplog.records)


async def test_get_items_that_never_answers_is_skipped_after_the_timeout(connect, caplog):
    caplog.set_level(logging.INFO, LOGGER)
    await raw_service(connect, battery_name("hung"),
                      lambda msg, bus: True if msg.member == "GetItems" else None)
    good = await publish_battery(connect, "fine")
    events = Events()
    monitor = await start_monitor(connect, events, call_timeout=0.2)

    assert list(monitor.services) == [battery_name("fine")]
    lines = warnings_about(caplog, battery_name("hung"))
    assert len(lines) == 1 and "no answer to GetItems within 0.2 s" in lines[0]
    good["/Soc"] = 70.0
    good.publish()
    await events.until(lambda: events.changed)
    assert events.changed == [(battery_name("fine"), {"/Soc": 70.0})]


async def test_malformed_signals_are_ignored_and_logged_once(connect, caplog):
    caplog.set_level(logging.INFO, LOGGER)
    events = Events()
    svc = await publish_battery(connect, "bad", voltage=52.0)
    monitor = await start_monitor(connect, events)
    send = svc.bus.send
    send(raw_signal("/Dc/0/Voltage", "PropertiesChanged", "s", "53.0"))
    send(raw_signal("/Dc/0/Voltage", "PropertiesChanged", "a{sv}", {"Text": Variant("s", "53")}))
    send(raw_signal("/Dc/0/Voltage", "PropertiesChanged", "as", ["Value", "53"]))
    send(raw_signal("/", "ItemsChanged", "a{ss}", {"/Dc/0/Voltage": "53.0"}))
    send(raw_signal("/", "ItemsChanged", "a{sa{sv}}", {"/Dc/0/Voltage": {"Text": Variant("s", "x")}}))
    svc["/Dc/0/Current"] = -4.0
    svc.publish()
    await events.until(lambda: events.changed)

    assert events.changed == [(battery_name("bad"), {"/Dc/0/Current": -4.0})]
    assert monitor.services[battery_name("bad")].values["/Dc/0/Voltage"] == 52.0
    lines = warnings_about(caplog, battery_name("bad"))
    assert len(lines) == 2
    assert any("PropertiesChanged" in line for line in lines)
    assert any("ItemsChanged" in line for line in lines)


async def test_services_without_a_valid_device_instance_are_skipped(connect, caplog):
    caplog.set_level(logging.INFO, LOGGER)
    await publish_battery(connect, "noinstance", instance="absent")
    await publish_battery(connect, "invalidinstance", instance=None)
    settings = BusItemService(await connect(), "com.victronenergy.settings", signals="properties")
    settings.add_path("/Settings/SystemSetup/MaxChargeVoltage", 55.2, kind=float)
    await settings.register()
    events = Events()
    monitor = await start_monitor(connect, events, classes={
        "battery": BATTERY_PATHS, "settings": ["/Settings/SystemSetup/MaxChargeVoltage"]})

    assert list(monitor.services) == ["com.victronenergy.settings"]
    assert monitor.services["com.victronenergy.settings"].device_instance is None
    assert monitor.services["com.victronenergy.settings"].values == {
        "/Settings/SystemSetup/MaxChargeVoltage": 55.2}
    for suffix in ("noinstance", "invalidinstance"):
        lines = warnings_about(caplog, battery_name(suffix))
        assert len(lines) == 1 and "/DeviceInstance" in lines[0]


async def test_scan_does_not_overwrite_a_newer_value_from_a_signal(connect):
    """The GetItems reply and a later signal arrive together: the signal's value must win."""

    def answer(msg: Message, bus: MessageBus):
        if msg.member != "GetItems":
            return None
        items = {"/DeviceInstance": {"Value": Variant("i", 5), "Text": Variant("s", "5")},
                 "/Dc/0/Voltage": {"Value": Variant("d", 50.0), "Text": Variant("s", "50.00V")}}
        bus.send(Message.new_method_return(msg, "a{sa{sv}}", [items]))
        bus.send(raw_signal("/Dc/0/Voltage", "PropertiesChanged", "a{sv}",
                            {"Value": Variant("d", 51.0), "Text": Variant("s", "51.00V")}))
        return True

    await raw_service(connect, battery_name("race"), answer)
    events = Events()
    monitor = await start_monitor(connect, events)
    assert monitor.services[battery_name("race")].values["/Dc/0/Voltage"] == 51.0
    assert events.changed == []  # values seen before on_added are part of the scan


# ----- runtime path changes and bus limits -------------------------------------------------------


async def test_set_paths_changes_the_subscription_at_runtime(connect):
    events = Events()
    svc = await publish_battery(connect, "sp", signals="properties")
    monitor = await start_monitor(connect, events, classes={"battery": ["/Dc/0/Voltage"]})
    record = monitor.services[battery_name("sp")]
    assert record.values == {"/Dc/0/Voltage": 52.0}

    await monitor.set_paths("battery", ["/Dc/0/Voltage", "/Voltages/Cell1"])
    assert record.values == {"/Dc/0/Voltage": 52.0, "/Voltages/Cell1": 3.3}
    assert events.changed == [(battery_name("sp"), {"/Voltages/Cell1": 3.3})]
    assert await match_rules(monitor.bus) == 1 + 1 + 2

    await monitor.set_paths("battery", ["/Voltages/Cell1"])
    assert record.values == {"/Voltages/Cell1": 3.3}
    assert await match_rules(monitor.bus) == 1 + 1 + 1
    before = monitor.signals_received
    svc["/Dc/0/Voltage"] = 51.0
    svc.publish()
    svc["/Voltages/Cell1"] = 3.4
    svc.publish()
    await events.until(lambda: len(events.changed) == 2)
    assert events.changed[1] == (battery_name("sp"), {"/Voltages/Cell1": 3.4})
    assert monitor.signals_received == before + 1


async def test_a_bank_of_sixteen_packs_fits_the_match_rule_limit(connect, bus_address, caplog):
    from aggbatt.core.engine import pack_paths

    # What the daemon follows by default: no cell voltages, the history.
    PACK_PATHS = pack_paths(cell_voltages=False, history=True)

    caplog.set_level(logging.INFO, LOGGER)
    packs = 16
    # One rule per wanted path would need 1 + 16 * (1 + 50): over a stock bus's 512.
    assert 1 + packs * (1 + len(PACK_PATHS)) > 512
    bank = SimBank(count=packs, cells=24, name_prefix="bank")
    await bank.start(bus_address)
    try:
        events = Events()
        monitor = await start_monitor(connect, events, classes={"battery": PACK_PATHS})
        assert len(monitor.services) == packs
        rules = await match_rules(monitor.bus)
        assert warnings_about(caplog, "max_match_rules_per_connection") == []
        per_pack, rest = divmod(rules - 1, packs)
        assert rest == 0 and 1 + 32 * per_pack <= 512, f"{per_pack} rules per pack"

        # The wanted paths each pack has a valid value on, read as a Venus consumer would.
        client = await connect()
        valid = {}
        for pack in bank.packs:
            items = await get_items(client, pack.service_name)
            valid[pack.service_name] = {p for p in PACK_PATHS
                                        if p in items and unwrap(items[p]["Value"]) is not None}
        assert all("/Soc" in paths for paths in valid.values())

        # Every cell of every pack changes, then /Soc: only the 16 /Soc signals arrive.
        received = monitor.signals_received
        for pack in bank.packs:
            for n in range(1, 25):
                pack.invalidate(f"/Voltages/Cell{n}")
            assert pack.publish() == 24
            pack.invalidate("/Soc")
            assert pack.publish() == 1
        await events.until(lambda: len(events.changed) == packs)
        assert monitor.signals_received == received + packs
        assert all(changes == {"/Soc": None} for _, changes in events.changed)

        # Every other wanted path changes (most of them lie in namespaces): all are delivered.
        events.changed.clear()
        received, unwanted = monitor.signals_received, monitor.unwanted_signals
        expected = {name: paths - {"/Soc"} for name, paths in valid.items()}
        for pack in bank.packs:
            for path in expected[pack.service_name]:
                pack.invalidate(path)
            pack.publish()

        def delivered() -> dict[str, set[str]]:
            got: dict[str, set[str]] = {name: set() for name in expected}
            for name, changes in events.changed:
                got[name].update(path for path, value in changes.items() if value is None)
            return got

        with contextlib.suppress(asyncio.TimeoutError):
            await events.until(lambda: delivered() == expected)
        assert delivered() == expected
        assert monitor.signals_received - received == sum(map(len, expected.values()))
        assert monitor.unwanted_signals == unwanted

        # Removing all 1 + 16 * per_pack rules at once must not overrun the connection.
        await monitor.close()
        assert monitor.bus.connected
        assert await match_rules(monitor.bus) == 0
    finally:
        await bank.stop()


async def test_namespace_rule_admits_unwanted_neighbours_that_are_counted_and_dropped(connect):
    svc = BusItemService(await connect(), battery_name("ns"), signals="properties")
    svc.add_path("/DeviceInstance", 7, kind=int)
    for n in range(1, 5):
        svc.add_path(f"/Alarms/A{n}", 0, kind=int)
    for n in range(1, 9):
        svc.add_path(f"/Voltages/Cell{n}", 3.3, kind=float)
    svc.add_path("/Voltages/Sum", 26.4, kind=float)
    await svc.register()
    wanted = ["/Alarms/A1", "/Alarms/A2", "/Alarms/A3", "/Voltages/Sum"]
    events = Events()
    monitor = await start_monitor(connect, events, classes={"battery": wanted})
    # NameOwnerChanged, ItemsChanged, /Alarms (3 wanted of 4), /Voltages/Sum (1 of 9).
    assert await match_rules(monitor.bus) == 4

    svc["/Alarms/A4"] = 2
    for n in range(1, 9):
        svc[f"/Voltages/Cell{n}"] = 3.4
    svc.publish()
    for n in range(1, 4):
        svc[f"/Alarms/A{n}"] = 1
    svc["/Voltages/Sum"] = 27.2
    svc.publish()
    await events.until(lambda: len(events.changed) == 4)
    assert monitor.signals_received == 1 + 4
    assert monitor.unwanted_signals == 1
    assert {p: v for _, c in events.changed for p, v in c.items()} == {
        "/Alarms/A1": 1, "/Alarms/A2": 1, "/Alarms/A3": 1, "/Voltages/Sum": 27.2}
    assert "/Alarms/A4" not in monitor.services[battery_name("ns")].values


async def test_close_while_a_scan_is_in_flight(connect):
    pending: list[Message] = []
    asked = asyncio.Event()

    def answer(msg: Message, bus: MessageBus):
        if msg.member != "GetItems":
            return None
        pending.append(msg)
        asked.set()
        return True  # answered only after close()

    service = await raw_service(connect, battery_name("slow"), answer)
    events = Events()
    monitor = Monitor(await connect(), {"battery": BATTERY_PATHS}, on_added=events.on_added,
                      on_changed=events.on_changed, call_timeout=5.0)
    start = asyncio.create_task(monitor.start())
    await asyncio.wait_for(asked.wait(), 3)
    # NameOwnerChanged, and the scan's ItemsChanged and sender-wide PropertiesChanged.
    assert await match_rules(monitor.bus) == 3
    await monitor.close()
    await asyncio.wait_for(start, 3)
    assert await match_rules(monitor.bus) == 0

    # The late answer and a signal reach a closed monitor: nothing happens.
    items = {"/DeviceInstance": {"Value": Variant("i", 1), "Text": Variant("s", "1")},
             "/Soc": {"Value": Variant("d", 50.0), "Text": Variant("s", "50")}}
    service.send(Message.new_method_return(pending[0], "a{sa{sv}}", [items]))
    service.send(raw_signal("/Soc", "PropertiesChanged", "a{sv}",
                            {"Value": Variant("d", 51.0), "Text": Variant("s", "51")}))
    # Round trips on both connections: the daemon has routed the answer, the monitor has read it.
    await match_rules(service)
    assert await match_rules(monitor.bus) == 0
    assert monitor.services == {} and events.added == [] and events.changed == []


LIMITED_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
  <limit name="{limit}">{value}</limit>
</busconfig>
"""


@pytest.fixture
def limited_bus(tmp_path):
    """A dbus-daemon that allows only 6 match rules per connection (a stock system bus: 512)."""
    yield from bus_with_limit(tmp_path, "max_match_rules_per_connection", 6)


def bus_with_limit(tmp_path, limit: str, value: int):
    daemon = shutil.which("dbus-daemon")
    if daemon is None:
        pytest.skip("dbus-daemon not installed")
    config = tmp_path / "bus.conf"
    config.write_text(LIMITED_CONFIG.format(socket=tmp_path / "bus", limit=limit, value=value))
    process = subprocess.Popen([daemon, f"--config-file={config}", "--nofork", "--nopidfile",
                                "--print-address=1"], stdout=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = process.stdout.readline().decode().strip()
    process.stdout.close()
    yield address
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=5)


async def test_too_many_match_rules_fall_back_to_one_rule_per_sender(limited_bus, caplog):
    """Four of sixteen cells cannot share a namespace rule: 1 + 1 + 3 + 4 rules > 6."""
    caplog.set_level(logging.INFO, LOGGER)
    buses: list[MessageBus] = []

    async def connect() -> MessageBus:
        bus = await MessageBus(bus_address=limited_bus).connect()
        buses.append(bus)
        return bus

    try:
        svc = await publish_battery(connect, "many", signals="properties", cells=16)
        wanted = [*BATTERY_PATHS, *(f"/Voltages/Cell{n}" for n in range(1, 5))]
        events = Events()
        monitor = await start_monitor(connect, events, classes={"battery": wanted})
        record = monitor.services[battery_name("many")]
        assert set(record.values) == set(wanted)
        assert await match_rules(monitor.bus) == 1 + 2
        assert len(warnings_about(caplog, "max_match_rules_per_connection")) == 1

        svc["/ProductName"] = "renamed"
        svc.publish()
        svc["/Voltages/Cell8"] = 3.5
        svc.publish()
        svc["/Voltages/Cell4"] = 3.5
        svc.publish()
        await events.until(lambda: events.changed)
        # The unwanted paths now reach the process but are filtered there.
        assert monitor.signals_received == 3
        assert monitor.unwanted_signals == 2
        assert events.changed == [(battery_name("many"), {"/Voltages/Cell4": 3.5})]
    finally:
        for bus in buses:
            bus.disconnect()


# ----- the scanner: GetItems on a connection and thread of its own -------------------------------


async def bus_names(connect) -> list[str]:
    client = await connect()
    reply = await asyncio.wait_for(client.call(Message(
        destination=DBUS, path=DBUS_PATH, interface=DBUS, member="ListNames")), 3)
    return reply.body[0]


def scanners_of_earlier_tests_ended() -> set[threading.Thread]:
    """Wait for the scanners of monitors earlier tests left open (each ends within about a
    second of its test's connections) and return the threads left: the collector pauses while
    any scanner has a call in flight."""
    for thread in threading.enumerate():
        if thread.name == "aggbatt-scanner":
            thread.join(5.0)
    return set(threading.enumerate())


async def test_scans_and_their_retries_use_a_connection_of_their_own_that_close_ends(connect):
    """A huge GetItems reply is decoded on the scanner's thread, not on the loop that handles
    signals; here: every scan comes from the scanner, and close() ends it."""
    threads_before = scanners_of_earlier_tests_ended()
    callers: list[str] = []
    called = asyncio.Event()
    busy = True

    def answer(msg: Message, bus: MessageBus):
        if msg.member != "GetItems":
            return None
        callers.append(msg.sender)
        called.set()
        if busy:
            return Message.new_error(msg, "com.example.Error.Busy", "busy")
        return Message.new_method_return(msg, "a{sa{sv}}", [
            {"/DeviceInstance": {"Value": Variant("i", 7)}, "/Soc": {"Value": Variant("d", 40.0)}}])

    await raw_service(connect, battery_name("late"), answer)
    good = await publish_battery(connect, "good")
    events = Events()
    monitor = await start_monitor(connect, events, retry_delay=0.05, retry_max=0.05)
    assert monitor.services[battery_name("good")].values["/Soc"] == 80.0
    await until(called, lambda: len(callers) >= 3, 3.0)
    busy = False
    await events.until(lambda: len(events.added) == 2)
    assert monitor.services[battery_name("late")].values == {"/Soc": 40.0}
    # Signals still arrive on the main connection.
    good["/Soc"] = 79.0
    good.publish()
    await events.until(lambda: events.changed)
    assert events.changed == [(battery_name("good"), {"/Soc": 79.0})]

    [scanner] = set(callers)
    assert scanner != monitor.bus.unique_name
    assert scanner in await bus_names(connect)
    assert [t.name for t in set(threading.enumerate()) - threads_before] == ["aggbatt-scanner"]
    await monitor.close()
    assert scanner not in await bus_names(connect)
    assert set(threading.enumerate()) - threads_before == set()
    assert gc.isenabled()


async def test_without_a_second_connection_scans_use_the_main_one(tmp_path, caplog):
    """A bus that admits two connections: the service's and the monitor's."""
    caplog.set_level(logging.INFO, LOGGER)
    threads_before = set(threading.enumerate())
    buses: list[MessageBus] = []

    async def connect() -> MessageBus:
        bus = await MessageBus(bus_address=address).connect()
        buses.append(bus)
        return bus

    limited = bus_with_limit(tmp_path, "max_connections_per_user", 2)
    address = next(limited)
    try:
        await publish_battery(connect, "only")
        events = Events()
        monitor = await start_monitor(connect, events)
        assert monitor.services[battery_name("only")].values["/Soc"] == 80.0
        [line] = warnings_about(caplog, "no second connection for scans")
        assert "scanning on the main one" in line
        assert set(threading.enumerate()) - threads_before == set()
        await monitor.close()
    finally:
        for bus in buses:
            bus.disconnect()
        limited.close()


async def test_a_call_in_flight_when_the_scanner_stops_fails_instead_of_being_cancelled(connect):
    """The monitor retries a scan that failed; a cancellation it did not ask for would end the
    service's worker and leave the service unfollowed."""
    threads_before = scanners_of_earlier_tests_ended()
    asked = asyncio.Event()

    def answer(msg: Message, bus: MessageBus):
        if msg.member != "GetItems":
            return None
        asked.set()
        return True  # never answered

    await raw_service(connect, battery_name("held"), answer)
    scanner = await Scanner.open(await connect(), timeout=3.0)
    assert scanner.alive

    async def get_items(bus: MessageBus) -> Message:
        return await bus.call(Message(destination=battery_name("held"), path="/",
                                      interface=BUSITEM, member="GetItems"))

    call = asyncio.create_task(scanner.run(get_items, timeout=10.0))
    await asyncio.wait_for(asked.wait(), 3)
    # The collector pauses while a scan call is in flight (decoding a huge reply would have it
    # walk millions of new objects again and again) and always resumes.
    assert not gc.isenabled()
    scanner.stop()
    with pytest.raises(EOFError):  # what dbus-fast gives a call in flight when its connection ends
        await asyncio.wait_for(call, 3)
    assert gc.isenabled()
    assert not scanner.alive
    await scanner.close()
    assert set(threading.enumerate()) - threads_before == set()
    with pytest.raises(ConnectionError):
        await scanner.run(get_items, timeout=1.0)


async def test_calls_that_keep_overlapping_do_not_keep_the_collector_paused(connect, monkeypatch):
    """Services that never answer, retried, could keep a scan call in flight at all times."""
    scanners_of_earlier_tests_ended()
    monkeypatch.setattr(scanner_module, "MAX_PAUSE", 0.0)
    asked: list[Message] = []
    held = asyncio.Event()

    def answer(msg: Message, bus: MessageBus):
        if msg.member != "GetItems":
            return None
        asked.append(msg)
        held.set()
        return True  # never answered

    await raw_service(connect, battery_name("held"), answer)
    scanner = await Scanner.open(await connect(), timeout=3.0)

    async def get_items(bus: MessageBus) -> Message:
        return await bus.call(Message(destination=battery_name("held"), path="/",
                                      interface=BUSITEM, member="GetItems"))

    collections: list[int] = []

    def collected(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    first = asyncio.create_task(scanner.run(get_items, timeout=10.0))
    await until(held, lambda: len(asked) == 1)
    gc.callbacks.append(collected)
    try:
        second = asyncio.create_task(scanner.run(get_items, timeout=10.0))
        await until(held, lambda: len(asked) == 2)
        assert not gc.isenabled()
    finally:
        gc.callbacks.remove(collected)
    assert 2 in collections
    await scanner.close()
    await asyncio.gather(first, second, return_exceptions=True)
    assert gc.isenabled()
