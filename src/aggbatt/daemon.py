"""The running daemon: bus monitor -> engine tick -> published aggregate battery.

Theory of operation:

- Two connections. The aggregate service has its own (contract 6.1: consumers map one unique
  sender to one service); the monitor and the settings client share the other.
- The engine tick runs every `service.tick_interval` seconds and, debounced by `service.debounce`,
  as soon as a safety input changes (a pack's limits, AllowTo*, blocking, alarms, cell extremes)
  or a pack appears or vanishes. Ticks are synchronous: the engine sees one consistent snapshot.
- A tick that raises publishes the engine's fail-safe limits and /Alarms/InternalFailure; each
  kind of exception is logged once. A watchdog thread exits the process when ticks stop for
  `safety.watchdog_timeout` seconds so the supervisor restarts it (a frozen daemon would leave
  DVCC applying stale limits forever: systemcalc has no timeout, contract 4.6).
- The bus name is claimed after the first tick, so the first GetItems a consumer makes already
  holds a computed aggregate, and with DO_NOT_QUEUE so a second instance exits with a message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from aggbatt import __version__
from aggbatt.bus.monitor import Monitor, RemoteService
from aggbatt.bus.service import BusItemService
from aggbatt.bus.settings import SettingsClient, SettingSpec, SettingsUnavailable
from aggbatt.config import Config
from aggbatt.engine import Engine, ServiceReading, TickResult, needs_urgent_tick, pack_paths
from aggbatt.paths import PRODUCT_ID, add_spec_path
from aggbatt.persist import read_json, write_json_atomic

log = logging.getLogger("aggbatt")

STATUS_INTERFACE = "io.github.aggbatt.Status"
PACKS_FILE = "packs.json"
STATE_VERSION = 1


class Daemon:
    def __init__(self, config: Config, bus_address: str | None, state_dir: Path,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.bus_address = bus_address
        self.state_dir = state_dir
        self.clock = clock
        self.engine = Engine(config, known_packs=self._load_known_packs())
        self.service: BusItemService | None = None
        self.monitor: Monitor | None = None
        self.settings: SettingsClient | None = None
        self._buses: list[MessageBus] = []
        self._urgent: asyncio.TimerHandle | None = None
        self._stopped = asyncio.Event()
        self._heartbeat = clock()
        self._logged_errors: set[str] = set()
        self._last: TickResult | None = None
        self.ticks = 0

    # ----- start-up ------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config.service
        client_bus = await self._connect()
        service_bus = await self._connect()
        self.settings = SettingsClient(client_bus, timeout=2.0)
        instance, custom_name = await self._claim_identity()
        svc = BusItemService(service_bus, cfg.name)
        self.service = svc
        for path, value in {
            "/Mgmt/ProcessName": "aggbatt",
            "/Mgmt/ProcessVersion": __version__,
            "/Mgmt/Connection": "Virtual (aggbatt)",
            "/DeviceInstance": instance,
            "/ProductId": PRODUCT_ID,
            "/ProductName": cfg.product_name,
            "/FirmwareVersion": __version__,
            "/HardwareVersion": None,
            "/Connected": 1,
            "/Serial": cfg.unique_id,
        }.items():
            add_spec_path(svc, path, value)
        svc.add_path("/CustomName", custom_name, kind=str, writeable=True,
                     on_change=self._custom_name_changed)
        service_bus.add_message_handler(self._status_call)
        self.monitor = Monitor(
            client_bus,
            {"battery": pack_paths(self.config.discovery.cell_voltages)},
            ignore=(cfg.name,),
            on_added=self._service_added,
            on_removed=self._service_added,
            on_changed=self._values_changed,
        )
        await self.monitor.start()
        self.tick()
        await svc.register()
        log.info("published %s as DeviceInstance %d with %d pack(s) found", cfg.name, instance,
                 sum(1 for p in (self._last.packs if self._last else ()) if p.online))

    async def _connect(self) -> MessageBus:
        if self.bus_address is None:
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        else:
            bus = await MessageBus(bus_address=self.bus_address).connect()
        self._buses.append(bus)
        return bus

    async def _claim_identity(self) -> tuple[int, str]:
        cfg = self.config.service
        assert self.settings is not None
        try:
            instance = await self.settings.claim_device_instance(
                cfg.unique_id, "battery", cfg.device_instance)
            stored = await self.settings.add_settings(
                [SettingSpec(f"/Settings/Devices/{cfg.unique_id}/CustomName", "")])
            name = stored.get(f"/Settings/Devices/{cfg.unique_id}/CustomName") or ""
            return instance, str(name)
        except SettingsUnavailable as exc:
            log.warning("%s; publishing with DeviceInstance %d from the config, a new "
                        "/CustomName is kept in memory only", exc, cfg.device_instance)
            return cfg.device_instance, ""

    def _custom_name_changed(self, path: str, value: Any) -> bool:
        if self.settings is not None:
            key = f"/Settings/Devices/{self.config.service.unique_id}/CustomName"
            asyncio.get_running_loop().create_task(self._save_setting(key, value))
        return True

    async def _save_setting(self, path: str, value: Any) -> None:
        assert self.settings is not None
        try:
            code = await self.settings.set(path, value)
        except SettingsUnavailable as exc:
            log.warning("could not save %s: %s", path, exc)
            return
        if code != 0:
            log.warning("settings refused %s = %r (code %d)", path, value, code)

    # ----- ticks ---------------------------------------------------------------------------

    def _values_changed(self, service: RemoteService, changed: Mapping[str, Any]) -> None:
        if needs_urgent_tick(changed):
            self._schedule_urgent()

    def _service_added(self, service: RemoteService) -> None:
        self._schedule_urgent()

    def _schedule_urgent(self) -> None:
        if self._urgent is None and self.service is not None and self.service.registered:
            loop = asyncio.get_running_loop()
            self._urgent = loop.call_later(self.config.service.debounce, self._urgent_tick)

    def _urgent_tick(self) -> None:
        self._urgent = None
        self.tick()

    def _readings(self) -> list[ServiceReading]:
        assert self.monitor is not None
        return [
            ServiceReading(service=s.name, values=s.values, last_change=s.last_change,
                           appeared_at=s.appeared_at)
            for s in self.monitor.of_class("battery")
        ]

    def tick(self) -> None:
        now = self.clock()
        self._heartbeat = now
        readings = self._readings()
        try:
            result = self.engine.tick(now, readings, wall=time.time())
        except Exception as exc:  # noqa: BLE001 - the tick must never die (property 1)
            self._log_once(exc)
            result = self.engine.fail_safe(now, readings, exc)
        self.ticks += 1
        self._apply(result)

    def _log_once(self, exc: BaseException) -> None:
        kind = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if kind not in self._logged_errors:
            self._logged_errors.add(kind)
            log.exception("tick failed, publishing fail-safe limits (%s)", kind)

    def _apply(self, result: TickResult) -> None:
        assert self.service is not None
        svc = self.service
        for path, value in result.values.items():
            if path in svc:
                try:
                    svc[path] = value
                except TypeError:
                    self._log_once(TypeError(f"engine produced {value!r} for {path}"))
                    svc[path] = None
            else:
                add_spec_path(svc, path, value)
        for event in result.events:
            log.info("%s", event)
        if self._last is None or result.known_packs != self._last.known_packs:
            self._save_known_packs(result.known_packs)
        self._last = result
        svc.publish()

    async def run_forever(self) -> None:
        interval = self.config.service.tick_interval
        next_tick = self.clock() + interval
        while not self._stopped.is_set():
            delay = max(0.0, next_tick - self.clock())
            try:
                await asyncio.wait_for(self._stopped.wait(), delay)
            except asyncio.TimeoutError:
                pass
            if self._stopped.is_set():
                break
            self.tick()
            next_tick += interval
            if next_tick < self.clock():
                next_tick = self.clock() + interval

    def stop(self) -> None:
        self._stopped.set()

    async def close(self) -> None:
        if self._urgent is not None:
            self._urgent.cancel()
            self._urgent = None
        if self._last is not None:
            self._save_known_packs(self._last.known_packs)
        if self.monitor is not None:
            try:
                await asyncio.wait_for(self.monitor.close(), 1.0)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - shutting down anyway
                log.debug("monitor close did not finish cleanly")
        for bus in self._buses:
            bus.disconnect()
        self._buses.clear()

    # ----- watchdog ------------------------------------------------------------------------

    def start_watchdog(self) -> threading.Thread:
        timeout = self.config.safety.watchdog_timeout

        def watch() -> None:
            while not self._stopped.is_set():
                time.sleep(min(1.0, timeout / 4))
                stalled = self.clock() - self._heartbeat
                if stalled > timeout:
                    log.critical("tick loop stalled for %.1f s: exiting so the supervisor "
                                 "restarts aggbatt", stalled)
                    logging.shutdown()
                    os._exit(3)

        thread = threading.Thread(target=watch, name="aggbatt-watchdog", daemon=True)
        thread.start()
        return thread

    # ----- state ---------------------------------------------------------------------------

    def _load_known_packs(self) -> list[str]:
        read = read_json(self.state_dir / PACKS_FILE, STATE_VERSION)
        if read.data is None:
            log.info("no known packs yet (%s)", read.problem)
            return []
        known = read.data.get("known")
        if not isinstance(known, list) or not all(isinstance(k, str) for k in known):
            log.warning("%s holds no list of pack ids; starting without known packs",
                        self.state_dir / PACKS_FILE)
            return []
        return known

    def _save_known_packs(self, known: frozenset[str]) -> None:
        try:
            write_json_atomic(self.state_dir / PACKS_FILE,
                              {"version": STATE_VERSION, "known": sorted(known)})
        except OSError as exc:
            log.error("cannot save known packs to %s: %s", self.state_dir, exc)

    # ----- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        assert self.service is not None
        packs = [asdict(p) if is_dataclass(p) else dict(p) for p in (self._last.packs if self._last else ())]
        return {
            "service": self.service.name,
            "version": __version__,
            "ticks": self.ticks,
            "aggregate": {p: self.service[p] for p in self.service.paths()},
            "packs": packs,
            "config": {
                "soc": self.config.soc.strategy,
                "current": self.config.current.source,
                "charge": self.config.charge.strategy,
            },
        }

    def _status_call(self, msg: Message) -> Message | None:
        if (msg.message_type is not MessageType.METHOD_CALL or msg.interface != STATUS_INTERFACE
                or msg.member != "GetStatus"):
            return None
        return Message.new_method_return(msg, "s", [json.dumps(self.status(), default=str)])


def resolve_bus(choice: str) -> str | None:
    """--bus value -> address (None = system bus)."""
    if choice == "system":
        return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    if choice == "session":
        address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
        if not address:
            raise SystemExit("--bus session: DBUS_SESSION_BUS_ADDRESS is not set")
        return address
    return choice


async def run(config: Config, bus_address: str | None, state_dir: Path,
              ready: Callable[[Daemon], None] | None = None) -> int:
    daemon = Daemon(config, bus_address, state_dir)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, daemon.stop)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    try:
        await daemon.start()
    except Exception:
        await daemon.close()
        raise
    if ready is not None:
        ready(daemon)
    daemon.start_watchdog()
    try:
        await daemon.run_forever()
    finally:
        await daemon.close()
        log.info("stopped")
    return 0
