"""The velib-style floor: what the reference aggregator's receiving costs, without its logic.

Run by the system's Python (`/usr/bin/python3 velib_floor.py ...`), never the venv: it uses
dbus-python and GLib from the distribution, as velib does on a GX, and nothing of aggbatt, so the
file stands alone.

What it does, as velib's DbusMonitor does for every battery service:

- One GetItems per battery service present at the start (the benchmark's packs stay), the
  values kept per service and path.
- velib's two receivers, PropertiesChanged (path and sender as keywords) and ItemsChanged on `/`,
  but one pair per pack with the pack's unique name as sender: velib adds them without a sender
  and so also hears every other BusItem service, here the aggregate's own output, which would
  charge this floor for the daemon's publishing.
- Each PropertiesChanged is handled as velib's handler_value_changes does: look up the service by
  sender and the path, unwrap the value to plain Python, store value and text when it changed.

Counting matches floors.py: a message filter sees every message the connection reads (one Python
call and one increment each), gc pauses are timed per generation, SIGUSR1 writes the JSON report
to `--report`, and "ready" on stdout says it is subscribed. SIGTERM ends it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import dbus  # type: ignore[import-not-found, import-untyped, unused-ignore]
import dbus.mainloop.glib  # type: ignore[import-not-found, import-untyped, unused-ignore]
from gi.repository import GLib  # type: ignore[import-not-found, import-untyped, unused-ignore]

BATTERY_PREFIX = "com.victronenergy.battery."
BUSITEM = "com.victronenergy.BusItem"

_counts = {"sent": 0, "received": 0}
_gc: dict[str, list[Any]] = {"collections": [0, 0, 0], "seconds": [0.0, 0.0, 0.0]}


def unwrap(value: Any) -> Any:
    """dbus-python's types to plain Python, as velib's unwrap_dbus_value does."""
    if isinstance(value, dbus.Array):
        return None if len(value) == 0 else [unwrap(v) for v in value]
    if isinstance(value, dbus.Dictionary):
        return {unwrap(k): unwrap(v) for k, v in value.items()}
    if isinstance(value, dbus.Double):
        return float(value)
    if isinstance(value, (dbus.Byte, dbus.Int16, dbus.UInt16, dbus.Int32, dbus.UInt32,
                          dbus.Int64, dbus.UInt64)):
        return int(value)
    if isinstance(value, dbus.String):
        return str(value)
    if isinstance(value, dbus.Boolean):
        return bool(value)
    return value


class Monitor:
    def __init__(self, bus: Any, ignore: Sequence[str]) -> None:
        self.bus = bus
        self.services: dict[str, dict[str, dict[str, Any]]] = {}
        names = [str(n) for n in bus.list_names()
                 if str(n).startswith(BATTERY_PREFIX) and str(n) not in ignore]
        for name in names:
            owner = str(bus.get_name_owner(name))
            items = bus.get_object(name, "/").GetItems(dbus_interface=BUSITEM)
            self.services[owner] = {str(p): {"value": unwrap(v["Value"]), "text": v.get("Text")}
                                    for p, v in items.items()}
            bus.add_signal_receiver(self.value_changes, dbus_interface=BUSITEM,
                                    signal_name="PropertiesChanged", path_keyword="path",
                                    sender_keyword="sender", bus_name=owner)
            bus.add_signal_receiver(self.items_changed, dbus_interface=BUSITEM,
                                    signal_name="ItemsChanged", path="/",
                                    sender_keyword="sender", bus_name=owner)

    def value_changes(self, changes: Any, path: str | None = None, sender: str | None = None) -> None:
        if "Value" not in changes:
            return
        paths = self.services.get(str(sender))
        if paths is None:
            return
        item = paths.get(str(path))
        if item is None:
            return
        value = unwrap(changes["Value"])
        if "Text" in changes:
            item["text"] = changes["Text"]
        if item["value"] != value:
            item["value"] = value

    def items_changed(self, items: Any, sender: str | None = None) -> None:
        for path, changes in items.items():
            self.value_changes(changes, path, sender)


def _count(bus: Any, message: Any) -> Any:
    _counts["received"] += 1
    return dbus.lowlevel.HANDLER_RESULT_NOT_YET_HANDLED


def _install_gc_timer() -> None:
    started = [0.0]

    def timer(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            generation = info["generation"]
            _gc["collections"][generation] += 1
            _gc["seconds"][generation] += time.perf_counter() - started[0]

    gc.callbacks.append(timer)


def _report(path: str) -> bool:
    data = {**_counts, "gc": _gc, "modules": sorted(sys.modules), "dbus_fast_compiled": None,
            "pid": os.getpid()}
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="velib_floor.py")
    parser.add_argument("--report", required=True, help="file the SIGUSR1 report goes to")
    parser.add_argument("--bus", required=True, help="bus address")
    parser.add_argument("--ignore", action="append", default=[], help="service to leave out")
    args = parser.parse_args(argv)
    _install_gc_timer()
    dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
    bus = dbus.bus.BusConnection(args.bus)
    bus.add_message_filter(_count)
    Monitor(bus, args.ignore)
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGUSR1, _report, args.report)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    print("ready", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
