"""Make the aggregate the system's battery monitor and DVCC BMS, and give the choice back.

Why: Venus picks its battery monitor and its DVCC BMS automatically as the lowest DeviceInstance
among the batteries that publish a CVL (docs/victron-contract.md §4.3, §4.4), so a serialbattery
pack wins and the aggregate is ignored until it is selected explicitly in two settings that
dbus-systemcalc-py owns:

    /Settings/SystemSetup/BatteryService  s  "com.victronenergy.battery/<DeviceInstance>"
    /Settings/SystemSetup/BmsInstance     i  <DeviceInstance>   (-1 automatic, -255 none)

Rules:

- Both settings belong to systemcalc: they are only read and written, never created (AddSettings
  would rewrite systemcalc's defaults). When one does not exist, nothing is written.
- Before a setting is written, its present value is saved in `selection.json` in the state dir
  (atomic write). When that save fails, nothing is written: a value that was not saved could
  never be given back.
- A setting that already holds the aggregate is not written and nothing is saved for it: the user
  chose the aggregate, there is nothing to give back.
- Restoring gives a setting back only while it still holds what aggbatt wrote. A choice the user
  made since then (GX menu) wins and is left alone. The file is deleted once nothing is left to
  give back; a setting that could not be restored stays in it for the next attempt.
- The record says who asked for the selection: "config" (`service.select_as_battery`) or
  "command" (`aggbatt select-battery on`, which `aggbatt-ctl enable` runs). The daemon restores
  at start only a selection made by the config switch, when the switch is now off;
  `aggbatt select-battery off` restores any. Stopping or restarting the daemon restores nothing:
  the aggregate stays the system's battery across restarts and updates.
- Every write is logged with its reason. An absent or hung settings service raises
  SelectionError (or SettingsUnavailable) with a message saying what to do; callers log it.

State file: {"version": 1, "by": "config" | "command",
             "settings": {<path>: {"previous": <value before aggbatt>, "written": <our value>}}}
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbus_fast import Message
from dbus_fast.aio import MessageBus

from aggbatt.bus.busitem import BUSITEM, CallFailed, call
from aggbatt.bus.connection import BusUnavailable, open_bus
from aggbatt.bus.settings import SettingsClient, SettingsUnavailable
from aggbatt.bus.values import unwrap
from aggbatt.daemon.store import StateStore
from aggbatt.errors import AggbattError

log = logging.getLogger("aggbatt.selection")

BATTERY_SERVICE = "/Settings/SystemSetup/BatteryService"
BMS_INSTANCE = "/Settings/SystemSetup/BmsInstance"
SELECTION_FILE = "selection.json"
STATE_VERSION = 1
BY_CONFIG = "config"
BY_COMMAND = "command"

GX_MENU = ("on the GX device: Settings > System setup > Battery monitor, and "
           "Settings > DVCC > Controlling BMS")


class SelectionError(AggbattError, RuntimeError):
    """The selection could not be made or given back; the message says why and what to do."""


@dataclass
class SavedSelection:
    by: str
    settings: dict[str, dict[str, Any]]  # path -> {"previous": ..., "written": ...}

    def to_json(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "by": self.by, "settings": self.settings}


def targets(instance: int) -> dict[str, Any]:
    """The values that make DeviceInstance `instance` the battery monitor and the BMS."""
    return {BATTERY_SERVICE: f"com.victronenergy.battery/{instance}", BMS_INSTANCE: instance}


def read_selection(store: StateStore) -> tuple[SavedSelection | None, str | None]:
    """(the saved selection, None) or (None, why there is none usable)."""
    read = store.read(SELECTION_FILE, STATE_VERSION)
    if read.data is None:
        return None, read.problem
    by, settings = read.data.get("by"), read.data.get("settings")
    if by not in (BY_CONFIG, BY_COMMAND) or not isinstance(settings, dict) or not all(
            path in (BATTERY_SERVICE, BMS_INSTANCE) and isinstance(e, dict)
            and _setting_value(e.get("previous")) and _setting_value(e.get("written"))
            for path, e in settings.items()):
        return None, f"{store.path(SELECTION_FILE)} does not hold a selection record"
    return SavedSelection(by, {p: dict(e) for p, e in settings.items()}), None


def _setting_value(value: Any) -> bool:
    """A value the two settings can hold; anything else could not be written back."""
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    """Setting values compare as localsettings stores them (an int may come back as a float)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return bool(a == b)


class _Report:
    """Lines for the command line that are logged for the daemon's log at the same time."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        log.info("%s", text)
        self.lines.append(text)


async def _read_both(settings: SettingsClient) -> dict[str, Any]:
    values = {path: await settings.get(path) for path in (BATTERY_SERVICE, BMS_INSTANCE)}
    missing = [path for path, value in values.items() if value is None]
    if missing:
        raise SelectionError(
            f"{settings.service} has no {' and no '.join(missing)}: dbus-systemcalc-py creates "
            "them, so this is not a GX device or systemcalc is not running; nothing was written")
    return values


async def select(settings: SettingsClient, instance: int, store: StateStore, by: str,
                 reason: str) -> list[str]:
    """Make DeviceInstance `instance` the battery monitor and BMS; return what was done."""
    report = _Report()
    wanted = targets(instance)
    present = await _read_both(settings)
    saved, problem = read_selection(store)
    if saved is None and problem is not None and store.exists(SELECTION_FILE):
        log.warning("ignoring an unusable saved selection: %s", problem)
    record = saved or SavedSelection(by, {})
    if BY_COMMAND in (record.by, by):
        record.by = BY_COMMAND
    to_write = [path for path in wanted if not _same(present[path], wanted[path])]
    for path in to_write:
        entry = record.settings.get(path)
        if entry is not None and _same(present[path], entry["written"]):
            entry["written"] = wanted[path]  # our own earlier value (the DeviceInstance changed)
        else:
            record.settings[path] = {"previous": present[path], "written": wanted[path]}
    if not to_write:
        if saved is not None and saved.by != record.by:
            _save(store, record)
        report(f"the aggregate (DeviceInstance {instance}) is already the system's battery "
               "monitor and BMS")
        return report.lines
    _save(store, record)
    failed = []
    for path in to_write:
        code = await settings.set(path, wanted[path])
        if code == 0:
            report(f"set {path} = {wanted[path]!r} (was {present[path]!r}): {reason}")
        else:
            failed.append(f"{path} (code {code})")
    if failed:
        raise SelectionError(f"{settings.service} refused {', '.join(failed)}; set it {GX_MENU}")
    return report.lines


async def restore(settings: SettingsClient, store: StateStore, reason: str) -> list[str]:
    """Give back what `select` changed where it still holds aggbatt's value; return what was
    done."""
    report = _Report()
    saved, problem = read_selection(store)
    if saved is None:
        if store.exists(SELECTION_FILE):
            raise SelectionError(f"cannot restore the previous battery selection: {problem}; "
                                 f"choose the battery {GX_MENU}")
        report("no saved battery selection: nothing to restore")
        return report.lines
    failed = []
    for path, entry in list(saved.settings.items()):
        present = await settings.get(path)
        if present is None:
            failed.append(f"{path} does not exist")
            continue
        if not _same(present, entry["written"]):
            report(f"left {path} = {present!r} alone: changed since aggbatt set it to "
                   f"{entry['written']!r}")
            del saved.settings[path]
            continue
        code = await settings.set(path, entry["previous"])
        if code == 0:
            report(f"set {path} = {entry['previous']!r} (was {present!r}, aggbatt's choice): "
                   f"{reason}")
            del saved.settings[path]
        else:
            failed.append(f"{path} refused (code {code})")
    if saved.settings:
        _save(store, saved)
        raise SelectionError(f"could not restore {', '.join(failed)}; kept in "
                             f"{store.path(SELECTION_FILE)} for the next attempt")
    store.remove(SELECTION_FILE)
    return report.lines


def _save(store: StateStore, record: SavedSelection) -> None:
    try:
        store.write(SELECTION_FILE, record.to_json())
    except OSError as exc:
        raise SelectionError(f"cannot save the previous battery selection in {store.state_dir}: "
                             f"{exc.strerror or exc}; nothing was written") from None


async def apply_config_switch(settings: SettingsClient, instance: int, store: StateStore,
                              enabled: bool) -> None:
    """The daemon's side of `service.select_as_battery`: select when on; when off, give back
    a selection the switch made. Never raises: problems are logged."""
    try:
        if enabled:
            await select(settings, instance, store, BY_CONFIG,
                         "service.select_as_battery is true")
            return
        saved, _ = read_selection(store)
        if saved is not None and saved.by == BY_CONFIG:
            await restore(settings, store, "service.select_as_battery is now false")
    except (SelectionError, SettingsUnavailable) as exc:
        log.warning("battery selection: %s", exc)


def selection_status(store: StateStore, enabled: bool) -> dict[str, Any]:
    """For `aggbatt status`: the config switch and what would be given back."""
    saved, _ = read_selection(store)
    return {"select_as_battery": enabled,
            "saved_by": saved.by if saved else None,
            "previous": {p: e["previous"] for p, e in saved.settings.items()} if saved else {}}


# ----- the command line: aggbatt select-battery on|off ------------------------------------------

async def _device_instance(bus: MessageBus, settings: SettingsClient, service: str,
                           unique_id: str, timeout: float) -> int:
    """The aggregate's DeviceInstance: from the running daemon, else the one it claimed."""
    try:
        reply = await call(bus, Message(destination=service, path="/DeviceInstance",
                                        interface=BUSITEM, member="GetValue"), timeout)
    except CallFailed as exc:
        # No answer or an error reply: the daemon is not running. A lost connection is no
        # reason to look elsewhere.
        if exc.cause is not None:
            raise
    else:
        value = unwrap(reply.body[0])
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    claimed = await settings.get(f"/Settings/Devices/{unique_id}/ClassAndVrmInstance")
    kind, _, number = claimed.partition(":") if isinstance(claimed, str) else ("", "", "")
    if kind == "battery" and number.lstrip("-").isdigit():
        return int(number)
    raise SelectionError(f"{service} is not running and has never claimed a DeviceInstance: "
                         "start aggbatt once (aggbatt-ctl start), then run this again")


async def command(address: str | None, on: bool, state_dir: Path, service: str, unique_id: str,
                  timeout: float = 3.0) -> list[str]:
    """`aggbatt select-battery on|off`; raises SelectionError or SettingsUnavailable."""
    try:
        bus = await open_bus(address, timeout)
    except BusUnavailable as exc:
        raise SelectionError(str(exc)) from None
    # The person running the command decides: it writes whether or not the daemon runs.
    store = StateStore(state_dir, time.time)
    try:
        settings = SettingsClient(bus, timeout=timeout)
        if not on:
            return await restore(settings, store, "aggbatt select-battery off")
        instance = await _device_instance(bus, settings, service, unique_id, timeout)
        return await select(settings, instance, store, BY_COMMAND, "aggbatt select-battery on")
    finally:
        bus.disconnect()
