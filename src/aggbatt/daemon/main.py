"""The running daemon: bus monitor -> engine tick -> published aggregate battery.

Theory of operation:

- Two connections. The aggregate service has its own (victron-contract §6.1: consumers map one unique
  sender to one service); the monitor and the settings client share the other.
- The engine tick runs every `service.tick_interval` seconds and, debounced by `service.debounce`,
  as soon as a safety input changes (a pack's limits, AllowTo*, blocking, alarms, cell extremes)
  or a pack appears or vanishes. Ticks are synchronous: the engine sees one consistent snapshot.
- A tick that raises publishes the engine's fail-safe limits and /Alarms/InternalFailure; each
  kind of exception is logged once. A watchdog thread exits the process when ticks stop for
  `safety.watchdog_timeout` seconds so the supervisor restarts it (a frozen daemon would leave
  DVCC applying stale limits forever: systemcalc has no timeout, victron-contract §4.6).
- The bus name is claimed after the first tick, so the first GetItems a consumer makes already
  holds a computed aggregate, and with DO_NOT_QUEUE so a second instance exits with a message.
  That first tick waits at most START_SCAN_WAIT for the packs' scans: a pack that does not answer
  must not keep the aggregate off the bus (and the watchdog off) for two call timeouts. Such a
  pack joins when it answers; until then a known pack counts as not online.
  State files are written only once the name is ours: a second instance writes none.
- Run-time changes: SIGHUP re-reads the config file (rules and what it resets:
  aggbatt.daemon.reload), /LogLevel sets the log level, and `service.select_as_battery` makes the
  aggregate Venus' battery monitor and BMS once the name is ours, in the background
  (aggbatt.daemon.selection).
- Liveness probe: a pack whose values have not changed for `freshness.stale_after_idle` seconds
  gets one GetValue (then one per further `stale_after_idle` while it stays quiet), answered within
  min(PROBE_TIMEOUT, `stale_after`) seconds by any live driver. A driver that does not answer is
  hung: its readings go to the engine marked `unresponsive` until one of its values changes.
  Nothing else is polled.
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
from datetime import date
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from aggbatt import __version__
from aggbatt.bus.connection import open_bus
from aggbatt.bus.monitor import Monitor, RemoteService
from aggbatt.bus.service import BusItemService
from aggbatt.bus.settings import (
    SettingsClient,
    SettingSpec,
    SettingsUnavailable,
    UnusableDeviceInstance,
)
from aggbatt.daemon.charge_io import OwnChargeIO
from aggbatt.config import DEVICE_INSTANCE_RANGE, Config, ConfigError
from aggbatt.core.engine import (
    Engine,
    ServiceReading,
    TickResult,
    needs_urgent_tick,
    pack_paths,
)
from aggbatt.core.pages import info_values
from aggbatt.daemon.paths import PRODUCT_ID, add_spec_path
from aggbatt.daemon.persist import read_json, write_json_atomic
from aggbatt.daemon.reload import (
    LOG_LEVELS,
    ROOT_LOGGER,
    plan_reload,
    read_config,
    rebuild_strategies,
    set_log_level,
)
from aggbatt.daemon.selection import apply_config_switch, selection_status
from aggbatt.tools.status import ACCESS_DENIED, FORGET_REFUSED, STATUS_INTERFACE
from aggbatt.core.strategies.coulomb import (
    MIN_SOC_SETTING,
    SETTINGS_SERVICE,
    CoulombSoc,
    SaveDecision,
)
from aggbatt.core.strategies.coulomb import (
    STATE_FILE as SOC_FILE,
)
from aggbatt.core.strategies.coulomb import (
    STATE_VERSION as SOC_VERSION,
)
from aggbatt.core.strategies.victron_current import SERVICE_PATHS, VictronDevices

log = logging.getLogger("aggbatt")

PACKS_FILE = "packs.json"
BLOCKS_FILE = "blocks.json"  # the packs whose last fresh data blocks a direction
START_SCAN_WAIT = 1.5
STATE_VERSION = 1
PROBE_TIMEOUT = 2.0  # s: a live driver answers a GetValue at once, even when it is busy
BUS_DAEMON = "org.freedesktop.DBus"
BATTERY_PREFIX = "com.victronenergy.battery."
# Ample for any name a person gives a bank; the bound keeps any client on the bus from storing
# megabytes in localsettings.
CUSTOM_NAME_MAX = 64


class Daemon:
    def __init__(self, config: Config, bus_address: str | None, state_dir: Path,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path  # re-read on SIGHUP
        self.bus_address = bus_address
        self.state_dir = state_dir
        self.clock = clock
        self.wall_clock = wall_clock
        self.engine = Engine(config, known_packs=self._load_known_packs(),
                             blocks=self._load_blocks())
        soc = self.engine.strategies.soc
        self._counter = soc if isinstance(soc, CoulombSoc) else None
        self._min_soc: Any = None  # ESS minimum SoC from localsettings, for the own /TimeToGo
        if self._counter is not None:
            read = read_json(self.state_dir / SOC_FILE, SOC_VERSION)
            self._counter.counter.load(read.data, read.problem, wall_clock())
        self._own = OwnChargeIO.create(self.engine.strategies.charge, config, state_dir, clock)
        self.service: BusItemService | None = None
        self.monitor: Monitor | None = None
        self.settings: SettingsClient | None = None
        self._buses: list[MessageBus] = []
        self._urgent: asyncio.TimerHandle | None = None
        self._stopped = asyncio.Event()
        self._heartbeat = clock()
        self._logged_errors: set[str] = set()
        self._last: TickResult | None = None
        self._saved_known: frozenset[str] | None = None  # as in packs.json after our last write
        self._known_failing = False
        self._saved_blocks: Mapping[str, tuple[str, ...]] | None = None  # as in blocks.json
        self._blocks_failing = False
        self.ticks = 0
        self.exit_code = 0
        self._watches: list[asyncio.Task[None]] = []
        self._closing = False
        self._selection: asyncio.Task[None] | None = None
        self._level_before: int | None = None  # the aggbatt logger's level, restored by close()
        # Liveness probes (module header): when each quiet service was last probed, the probes
        # under way, and the change stamp of each service that did not answer.
        self._probed: dict[str, float] = {}
        self._probing: dict[str, asyncio.Task[None]] = {}
        self._unresponsive: dict[str, float] = {}
        self._refused_uids: set[int | None] = set()  # callers of ForgetMissingPacks told off once
        self._name_to_save: str | None = None  # the latest /CustomName not yet sent to settings
        self._name_writer: asyncio.Task[None] | None = None
        self._name_save_failed = False
        self._name_refused = 0
        self._name_refused_logged_at: float | None = None

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
        self._level_before = logging.getLogger(ROOT_LOGGER).level
        set_log_level(self.config.logging.level)
        svc.add_path("/LogLevel", self.config.logging.level, kind=str, writeable=True,
                     on_change=self._log_level_written)
        service_bus.add_message_handler(self._status_call)
        if self._counter is not None and self.config.soc.time_to_go_to_min_soc:
            await self._follow_min_soc()
        if self._own is not None:
            await self._own.start(self.settings)
        self.monitor = Monitor(
            client_bus,
            self._monitored(),
            ignore=(cfg.name,),
            on_added=self._service_added,
            on_removed=self._service_added,
            on_changed=self._values_changed,
        )
        await self.monitor.start(settle=START_SCAN_WAIT)
        self.tick()
        await svc.register()
        self._save_known_packs()  # what the first tick decided, now that the state is ours
        if self._counter is not None:
            self._save_soc(self._counter.take_save())
        self._select_battery()
        log.info("published %s as DeviceInstance %d with %d pack(s) found", cfg.name, instance,
                 sum(1 for p in (self._last.packs if self._last else ()) if p.online))

    def _monitored(self) -> dict[str, Any]:
        """Service classes and paths to follow: packs, plus the Victron devices of VictronDevices."""
        battery = pack_paths(self.config.discovery.cell_voltages, self.config.discovery.history)
        if not isinstance(self.engine.strategies.current, VictronDevices):
            return {"battery": battery}
        classes: dict[str, Any] = {c: frozenset(p) for c, p in SERVICE_PATHS.items()}
        classes["battery"] = battery | classes["battery"]
        if not self.config.current.include_dcdc:
            del classes["dcdc"]
        return classes

    async def _follow_min_soc(self) -> None:
        assert self.settings is not None
        try:
            await self.settings.watch([MIN_SOC_SETTING], self._min_soc_changed)
            self._min_soc = await self.settings.get(MIN_SOC_SETTING)
        except SettingsUnavailable as exc:
            log.info("no ESS minimum SoC (%s): /TimeToGo counts down to 0 %%", exc)

    def _min_soc_changed(self, path: str, value: Any) -> None:
        self._min_soc = value

    async def _connect(self) -> MessageBus:
        bus = await open_bus(self.bus_address)
        self._buses.append(bus)
        self._watches.append(asyncio.get_running_loop().create_task(self._watch_bus(bus)))
        return bus

    async def _watch_bus(self, bus: MessageBus) -> None:
        """A lost bus connection cannot be healed in place: stop with exit code 1 so the
        supervisor restarts us and we reconnect and rescan from scratch."""
        try:
            await bus.wait_for_disconnect()
        except Exception as exc:  # noqa: BLE001 - how it ended matters less than that it did
            log.debug("bus connection ended: %r", exc)
        if not self._stopped.is_set() and not self._closing:
            log.error("lost the D-Bus connection: exiting so the supervisor restarts aggbatt")
            self.exit_code = 1
            self.stop()

    async def _claim_identity(self) -> tuple[int, str]:
        cfg = self.config.service
        assert self.settings is not None
        try:
            low, high = DEVICE_INSTANCE_RANGE
            try:
                instance = await self.settings.claim_device_instance(
                    cfg.unique_id, "battery", cfg.device_instance, instances=range(low, high + 1))
            except UnusableDeviceInstance as exc:
                log.warning("%s; publishing DeviceInstance %d from the config", exc,
                            cfg.device_instance)
                instance = cfg.device_instance
            stored = await self.settings.add_settings(
                [SettingSpec(f"/Settings/Devices/{cfg.unique_id}/CustomName", "")])
            name = stored.get(f"/Settings/Devices/{cfg.unique_id}/CustomName")
            if not isinstance(name, str):
                name = ""
            if len(name) > CUSTOM_NAME_MAX:
                log.warning("the stored /CustomName has %d characters: publishing its first %d",
                            len(name), CUSTOM_NAME_MAX)
                name = name[:CUSTOM_NAME_MAX]
            return instance, name
        except SettingsUnavailable as exc:
            log.warning("%s; publishing with DeviceInstance %d from the config, a new "
                        "/CustomName is kept in memory only", exc, cfg.device_instance)
            return cfg.device_instance, ""

    def _custom_name_changed(self, path: str, value: Any) -> bool:
        """Any client may write /CustomName: take bounded text only, and keep at most one
        localsettings write in flight, so a flood (or a hung localsettings) costs neither memory
        nor log lines; the latest name is the one saved."""
        if not isinstance(value, str) or len(value) > CUSTOM_NAME_MAX:
            self._name_refused += 1
            now = self.clock()
            if self._name_refused_logged_at is None or now - self._name_refused_logged_at >= 60:
                self._name_refused_logged_at = now
                more = (f" ({self._name_refused - 1} more since the last report)"
                        if self._name_refused > 1 else "")
                log.warning("%s: refused a write that is not text of at most %d characters%s",
                            path, CUSTOM_NAME_MAX, more)
                self._name_refused = 0
            return False
        if self.settings is not None:
            self._name_to_save = value
            if self._name_writer is None or self._name_writer.done():
                self._name_writer = asyncio.get_running_loop().create_task(self._save_name())
        return True

    async def _save_name(self) -> None:
        assert self.settings is not None
        key = f"/Settings/Devices/{self.config.service.unique_id}/CustomName"
        while self._name_to_save is not None:
            value, self._name_to_save = self._name_to_save, None
            try:
                code = await self.settings.set(key, value)
                problem = None if code == 0 else f"localsettings refused it (code {code})"
            except SettingsUnavailable as exc:
                problem = str(exc)
            if problem is None:
                if self._name_save_failed:
                    log.info("localsettings answers again: saved /CustomName %r to %s", value,
                             key)
                self._name_save_failed = False
            elif not self._name_save_failed:
                self._name_save_failed = True
                log.warning("could not save /CustomName %r to %s: %s; it is published anyway, "
                            "and the next name is saved once localsettings answers", value, key,
                            problem)

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
        for name, stamp in list(self._unresponsive.items()):
            remote = self.monitor.services.get(name)
            if remote is None or remote.last_change != stamp:
                del self._unresponsive[name]
        readings = [
            ServiceReading(service=s.name, values=s.values, last_change=s.last_change,
                           appeared_at=s.appeared_at, changed_at=s.changed_at,
                           unresponsive=s.name in self._unresponsive)
            for s in self.monitor.services.values()
        ]
        if self._min_soc is not None:
            readings.append(ServiceReading(SETTINGS_SERVICE, {MIN_SOC_SETTING: self._min_soc},
                                           last_change=0.0, appeared_at=0.0))
        return readings

    def tick(self) -> None:
        now = self.clock()
        self._heartbeat = now
        readings = self._readings()
        try:
            result = self.engine.tick(now, readings, wall=self.wall_clock())
        except Exception as exc:  # noqa: BLE001 - the tick must never die (property 1)
            self._log_once(exc)
            result = self.engine.fail_safe(now, readings, exc)
        self.ticks += 1
        try:
            self._apply(result)
            self._probe_quiet(now, result)
            if self._counter is not None and self._owns_name():
                self._save_soc(self._counter.take_save())
            if self._own is not None:
                self._own.after_tick(now, self._owns_name())
        except Exception as exc:  # noqa: BLE001 - publishing or saving must not end the loop either
            self._log_once(exc, "publishing or saving after a tick failed; the next tick retries")

    def _probe_quiet(self, now: float, result: TickResult) -> None:
        """Start a liveness probe for each pack that has been quiet for stale_after_idle."""
        if self.monitor is None or self._closing:
            return
        quiet_for = self.config.freshness.stale_after_idle
        for pack in result.packs:
            name = pack.service
            if name is None or pack.age is None or pack.age < quiet_for or name in self._probing:
                continue
            last = self._probed.get(name)
            remote = self.monitor.services.get(name)
            if remote is None or (last is not None and now - last < quiet_for):
                continue
            self._probed[name] = now
            self._probing[name] = asyncio.create_task(self._probe(name, remote.last_change))

    async def _probe(self, name: str, stamp: float) -> None:
        try:
            assert self.monitor is not None
            timeout = min(PROBE_TIMEOUT, self.config.freshness.stale_after)
            if not await self.monitor.answers(name, timeout):
                remote = self.monitor.services.get(name)
                if remote is not None and remote.last_change == stamp:
                    self._unresponsive[name] = stamp
                    self._schedule_urgent()
        finally:
            self._probing.pop(name, None)

    def _log_once(self, exc: BaseException,
                  what: str = "tick failed, publishing fail-safe limits") -> None:
        kind = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if kind not in self._logged_errors:
            self._logged_errors.add(kind)
            log.exception("%s (%s)", what, kind)

    def _apply(self, result: TickResult) -> None:
        assert self.service is not None
        svc = self.service
        for path, value in {**result.values, **self._info_values()}.items():
            if path in svc:
                try:
                    svc[path] = value
                except TypeError:
                    self._log_once(TypeError(f"engine produced {value!r} for {path}"))
                    svc[path] = None
            else:
                add_spec_path(svc, path, value)
        svc.publish()
        self._last = result
        for event in result.events:
            log.log(event.level, "%s", event)
        self._save_known_packs()
        self._save_blocks()

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
        self._closing = True
        if self._urgent is not None:
            self._urgent.cancel()
            self._urgent = None
        for task in list(self._probing.values()):
            task.cancel()
        self._save_known_packs()
        self._save_blocks()
        if self._counter is not None and self._owns_name():
            self._save_soc(self._counter.counter.shutdown())
        if self._own is not None:
            await self._own.close(self._owns_name())
        if self._name_writer is not None:
            self._name_writer.cancel()
        if self._selection is not None and not self._selection.done():
            await asyncio.wait([self._selection], timeout=2.0)
            self._selection.cancel()
        if self._level_before is not None:
            logging.getLogger(ROOT_LOGGER).setLevel(self._level_before)
        if self.monitor is not None:
            try:
                await asyncio.wait_for(self.monitor.close(), 1.0)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - shutting down anyway
                log.debug("monitor close did not finish cleanly")
        for bus in self._buses:
            bus.disconnect()
        self._buses.clear()
        for task in self._watches:
            task.cancel()

    # ----- run-time changes: SIGHUP reload, /LogLevel, battery selection --------------------

    def reload(self) -> None:
        """SIGHUP: apply the config file again; rules and what it resets: aggbatt.daemon.reload."""
        if self.config_path is None:
            log.warning("SIGHUP: started without --config (built-in defaults), nothing to reload")
            return
        new = read_config(self.config_path)
        if new is None:
            return
        try:
            plan = plan_reload(self.config, new)
            strategies = rebuild_strategies(self.engine.strategies, plan.config, plan.rebuild,
                                            self.state_dir, self.wall_clock())
        except (ConfigError, ValueError) as exc:
            log.error("config reload: %s; keeping the running configuration", exc)
            return
        for level, line in plan.lines(self.config_path):
            log.log(level, "%s", line)
        old, self.config = self.config, plan.config
        self.engine.config = plan.config
        self.engine.strategies = strategies
        self._counter = strategies.soc if isinstance(strategies.soc, CoulombSoc) else None
        if self._own is not None:
            self._own.strategy = strategies.charge
        if self.service is None:
            return
        if plan.config.logging.level != old.logging.level:
            set_log_level(plan.config.logging.level)
            self.service["/LogLevel"] = plan.config.logging.level
        self.service["/ProductName"] = plan.config.service.product_name
        if plan.config.service.select_as_battery != old.service.select_as_battery:
            self._select_battery()
        self.tick()

    def _log_level_written(self, path: str, value: Any) -> bool:
        if value not in LOG_LEVELS:
            log.warning("%s = %r refused: use one of %s", path, value, ", ".join(LOG_LEVELS))
            return False
        set_log_level(value)
        log.warning("log level now %s (written to %s)", value, path)
        return True

    def _select_battery(self) -> None:
        """service.select_as_battery, in the background: a hung localsettings must not hold
        up the ticks."""
        if self.settings is None or self.service is None:
            return
        if self._selection is not None and not self._selection.done():
            self._selection.cancel()
        self._selection = asyncio.get_running_loop().create_task(apply_config_switch(
            self.settings, self.service["/DeviceInstance"], self.state_dir,
            self.config.service.select_as_battery))

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
            log.log(logging.INFO if read.absent else logging.WARNING,
                    "no known packs yet (%s)", read.problem)
            return []
        known = read.data.get("known")
        if not isinstance(known, list) or not all(isinstance(k, str) for k in known):
            log.warning("%s holds no list of pack ids; starting without known packs",
                        self.state_dir / PACKS_FILE)
            return []
        return known

    def _load_blocks(self) -> dict[str, Any]:
        read = read_json(self.state_dir / BLOCKS_FILE, STATE_VERSION)
        blocks = read.data.get("blocks") if read.data is not None else None
        if read.data is not None and not isinstance(blocks, dict):
            log.warning("%s holds no pack blocks; starting without saved blocks",
                        self.state_dir / BLOCKS_FILE)
        return blocks if isinstance(blocks, dict) else {}

    def _save_blocks(self) -> None:
        """Write the packs' blocks when they differ from what was last written successfully."""
        blocks = self._last.blocks if self._last is not None else None
        if blocks is None or not self._owns_name() or blocks == self._saved_blocks:
            return
        try:
            write_json_atomic(self.state_dir / BLOCKS_FILE, {
                "version": STATE_VERSION,
                "blocks": {pack_id: list(directions) for pack_id, directions in blocks.items()}})
            self._saved_blocks = blocks
            self._blocks_failing = False
        except OSError as exc:
            if not self._blocks_failing:  # retried at every tick: one line, not one per tick
                log.error("cannot save pack blocks to %s: %s", self.state_dir, exc)
            self._blocks_failing = True

    def _save_soc(self, decision: SaveDecision | None) -> None:
        if decision is None:
            return
        try:
            write_json_atomic(self.state_dir / SOC_FILE, decision.record(self.wall_clock()))
        except OSError as exc:
            log.error("cannot save the own SoC to %s: %s", self.state_dir / SOC_FILE, exc)

    def _owns_name(self) -> bool:
        """Only the instance that owns the bus name writes state: a second copy that failed to
        register must not overwrite what the running one saved."""
        return self.service is not None and self.service.registered

    def _save_known_packs(self) -> None:
        """Write the known packs when they differ from what was last written successfully."""
        if self._last is None or not self._owns_name():
            return
        known = self._last.known_packs
        if known == self._saved_known:
            return
        try:
            write_json_atomic(self.state_dir / PACKS_FILE,
                              {"version": STATE_VERSION, "known": sorted(known)})
            self._saved_known = known
            self._known_failing = False
        except OSError as exc:
            if not self._known_failing:  # retried at every tick: one line, not one per tick
                log.error("cannot save known packs to %s: %s", self.state_dir, exc)
            self._known_failing = True

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
            "current_source": self._current_status(),
            "not_answering": [asdict(u) for u in self.monitor.unanswered()] if self.monitor else [],
            "selection": selection_status(self.state_dir, self.config.service.select_as_battery),
            **({"own_charge": self._own.status()} if self._own is not None else {}),
        }

    def _info_values(self) -> dict[str, Any]:
        """The bank's decisions for the GX page (aggbatt.core.pages), from what `status` reports."""
        own = self._own.status() if self._own is not None else {}
        due = (self._own.strategy.next_balancing(date.fromtimestamp(self.wall_clock()))
               if self._own is not None else None)
        return info_values(current_source=self._current_status().get("source"),
                           soc_strategy=self.config.soc.strategy,
                           charge_strategy=self.config.charge.strategy,
                           balancing=own.get("balancing"), next_due=due,
                           feedin_guard=own.get("feedin_guard"))

    def _current_status(self) -> dict[str, Any]:
        """Which current source is in use, why not the configured one, shunts not found."""
        current = self.engine.strategies.current
        if isinstance(current, VictronDevices):
            return current.status()
        return {"source": self.config.current.source}

    def _status_call(self, msg: Message) -> Message | bool | None:
        if msg.message_type is not MessageType.METHOD_CALL or msg.interface != STATUS_INTERFACE:
            return None
        if msg.member == "GetStatus":
            return Message.new_method_return(msg, "s", [json.dumps(self.status(), default=str)])
        if msg.member == "ForgetMissingPacks" and self.service is not None:
            bus = self.service.bus
            task = asyncio.get_running_loop().create_task(self._forget_missing(msg))
            task.add_done_callback(
                lambda done: None if done.cancelled() else bus.send(done.result()))
            return True
        return None

    async def _forget_missing(self, msg: Message) -> Message:
        """ForgetMissingPacks. Forgetting a pack lifts what it held (on_pack_lost, its offline
        count), so only root and the user aggbatt runs as may ask (the CLI over SSH, not any
        process on the bus), and only packs that are surely gone are forgotten: a battery service
        on the bus that we could not read yet may be one of them, so then nothing is."""
        try:
            uid = await self._caller_uid(msg.sender)
            if uid not in (0, os.getuid()):
                if uid not in self._refused_uids:
                    self._refused_uids.add(uid)
                    log.warning("ForgetMissingPacks refused: %s runs as uid %s, not root or "
                                "aggbatt's user", msg.sender, "unknown" if uid is None else uid)
                return Message.new_error(msg, ACCESS_DENIED,
                                         "only root or the user aggbatt runs as may forget packs")
            unread = await self._unread_batteries()
            if unread:
                return Message.new_error(
                    msg, FORGET_REFUSED,
                    f"{', '.join(unread)} is on the bus but could not be read yet, so it may be "
                    "one of the missing packs: nothing forgotten; try again once it answers")
            self.tick()  # the packs on the bus right now, not at the last tick
            forgotten = self.engine.forget_missing()
            if forgotten:
                log.info("forgot packs no longer on the bus: %s", ", ".join(forgotten))
                self.tick()
            return Message.new_method_return(msg, "as", [forgotten])
        except Exception as exc:  # noqa: BLE001 - the caller gets an answer, the daemon runs on
            self._log_once(exc, "ForgetMissingPacks failed")
            return Message.new_error(msg, FORGET_REFUSED, f"nothing forgotten: {exc}")

    async def _caller_uid(self, sender: str | None) -> int | None:
        """The caller's Unix user as the bus daemon saw it connect; None when it cannot say
        (an anonymous or a TCP connection)."""
        assert self.service is not None
        reply = await asyncio.wait_for(self.service.bus.call(Message(
            destination=BUS_DAEMON, path="/org/freedesktop/DBus", interface=BUS_DAEMON,
            member="GetConnectionUnixUser", signature="s", body=[sender or ""])), 2.0)
        if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
            return None
        return int(reply.body[0])

    async def _unread_batteries(self) -> list[str]:
        """Battery services on the bus that the monitor holds no values of (its scan failed or
        is still running), besides our own."""
        assert self.monitor is not None and self.service is not None
        reply = await asyncio.wait_for(self.service.bus.call(Message(
            destination=BUS_DAEMON, path="/org/freedesktop/DBus", interface=BUS_DAEMON,
            member="ListNames")), 2.0)
        if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
            raise RuntimeError("the bus daemon did not list the services on the bus")
        followed = self.monitor.services
        return sorted(n for n in reply.body[0]
                      if n.startswith(BATTERY_PREFIX) and n != self.config.service.name
                      and not (n in followed and followed[n].values))


async def run(config: Config, bus_address: str | None, state_dir: Path,
              ready: Callable[[Daemon], None] | None = None,
              config_path: str | None = None) -> int:
    daemon = Daemon(config, bus_address, state_dir, config_path=config_path)
    loop = asyncio.get_running_loop()
    for sig, handler in ((signal.SIGTERM, daemon.stop), (signal.SIGINT, daemon.stop),
                         (signal.SIGHUP, daemon.reload)):
        try:
            loop.add_signal_handler(sig, handler)
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
    return daemon.exit_code
