"""The running daemon: bus monitor -> engine tick -> published aggregate battery.

Theory of operation (the jobs live in their own modules; this one wires them):

- Two connections. The aggregate service has its own (victron-contract §6.1: consumers map one unique
  sender to one service); the monitor and the settings client share the other.
- The engine tick runs every `service.tick_interval` seconds and, debounced by `service.debounce`,
  as soon as a safety input changes (a pack's limits, AllowTo*, blocking, alarms, cell extremes)
  or a pack appears or vanishes. Ticks are synchronous: the engine sees one consistent snapshot.
- A tick that raises publishes the engine's fail-safe limits and /Alarms/InternalFailure; each
  kind of exception is logged once. The watchdog (aggbatt.daemon.watchdog) ends the process when
  ticks stop.
- The bus name is claimed after the first tick, so the first GetItems a consumer makes already
  holds a computed aggregate, and with DO_NOT_QUEUE so a second instance exits with a message.
  That first tick waits at most START_SCAN_WAIT for the packs' scans: a pack that does not answer
  must not keep the aggregate off the bus (and the watchdog off) for two call timeouts. Such a
  pack joins when it answers; until then a known pack counts as not online.
  State files (aggbatt.daemon.store) are written only once the name is ours.
- What goes on the bus: aggbatt.daemon.publisher; identity in localsettings:
  aggbatt.daemon.identity; GetStatus and ForgetMissingPacks: aggbatt.daemon.endpoint; quiet packs
  are probed by aggbatt.daemon.liveness. Strategies take part through their hooks
  (aggbatt.core.strategies): their state files, the services and settings they follow.
- Run-time changes: SIGHUP re-reads the config file (rules and what it resets:
  aggbatt.daemon.reload), /LogLevel sets the log level, and `service.select_as_battery` makes the
  aggregate Venus' battery monitor and BMS once the name is ours, in the background
  (aggbatt.daemon.selection).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dbus_fast.aio import MessageBus

from aggbatt.bus.connection import open_bus
from aggbatt.bus.monitor import Monitor, RemoteService
from aggbatt.bus.service import BusItemService
from aggbatt.bus.settings import SettingsClient
from aggbatt.config import Config
from aggbatt.core.engine import Engine, TickResult, needs_urgent_tick
from aggbatt.daemon.charge_io import FeedinIO
from aggbatt.daemon.endpoint import StatusEndpoint, status_report
from aggbatt.daemon.hooks import SettingsFollower, monitored
from aggbatt.daemon.identity import CustomNameWriter, claim_identity
from aggbatt.daemon.liveness import Liveness
from aggbatt.daemon.publisher import add_device_paths, page_values, publish
from aggbatt.daemon.reload import ROOT_LOGGER, log_level_written, reload_daemon, set_log_level
from aggbatt.daemon.selection import apply_config_switch
from aggbatt.daemon.status_api import StatusReport
from aggbatt.daemon.store import StateStore, stateful
from aggbatt.daemon.watchdog import start_watchdog, watch_bus

log = logging.getLogger("aggbatt")

START_SCAN_WAIT = 1.5


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
        self.store = StateStore(state_dir, wall_clock, owner=self._owns_name)
        self.engine = Engine(config, known_packs=self.store.load_known_packs(),
                             blocks=self.store.load_blocks())
        self.store.restore(stateful(self.engine.strategies))
        self.feedin = FeedinIO.create(self.engine.strategies.charge, config, self.store, clock)
        self._settings = SettingsFollower()  # the localsettings values the strategies read
        self.service: BusItemService | None = None
        self.monitor: Monitor | None = None
        self.settings: SettingsClient | None = None
        self.liveness: Liveness | None = None
        self._buses: list[MessageBus] = []
        self._urgent: asyncio.TimerHandle | None = None
        self._stopped = asyncio.Event()
        self._heartbeat = clock()
        self._logged_errors: set[str] = set()
        self.last: TickResult | None = None
        self.ticks = 0
        self.exit_code = 0
        self._watches: list[asyncio.Task[None]] = []
        self._closing = False
        self._selection: asyncio.Task[None] | None = None
        self._level_before: int | None = None  # the aggbatt logger's level, restored by close()
        self._name: CustomNameWriter | None = None

    # ----- start-up ------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config.service
        client_bus = await self._connect()
        service_bus = await self._connect()
        self.settings = SettingsClient(client_bus, timeout=2.0)
        instance, custom_name = await claim_identity(self.settings, cfg)
        svc = BusItemService(service_bus, cfg.name)
        self.service = svc
        add_device_paths(svc, cfg, instance)
        self._name = CustomNameWriter(self.settings, cfg.unique_id, self.clock)
        svc.add_path("/CustomName", custom_name, kind=str, writeable=True,
                     on_change=self._name.changed)
        self._level_before = logging.getLogger(ROOT_LOGGER).level
        set_log_level(self.config.logging.level)
        svc.add_path("/LogLevel", self.config.logging.level, kind=str, writeable=True,
                     on_change=log_level_written)
        service_bus.add_message_handler(StatusEndpoint(self).handle)
        await self._settings.start(self.settings, self.engine.strategies)
        if self.feedin is not None:
            await self.feedin.start(self.settings)
        self.monitor = Monitor(client_bus, monitored(self.config, self.engine.strategies),
                               ignore=(cfg.name,),
                               on_added=self._service_added, on_removed=self._service_added,
                               on_changed=self._values_changed)
        self.liveness = Liveness(self.monitor, lambda: self.config.freshness,
                                 self._schedule_urgent)
        await self.monitor.start(settle=START_SCAN_WAIT)
        self.tick()
        await svc.register()
        self.store.save_packs(self.last)  # what the first tick decided, now that the state is ours
        self.store.save(self.engine.strategies)
        self.select_battery()
        log.info("published %s as DeviceInstance %d with %d pack(s) found", cfg.name, instance,
                 sum(1 for p in (self.last.packs if self.last else ()) if p.online))

    async def _connect(self) -> MessageBus:
        bus = await open_bus(self.bus_address)
        self._buses.append(bus)
        self._watches.append(asyncio.get_running_loop().create_task(
            watch_bus(bus, self._bus_lost)))
        return bus

    def _bus_lost(self) -> None:
        if not self._stopped.is_set() and not self._closing:
            log.error("lost the D-Bus connection: exiting so the supervisor restarts aggbatt")
            self.exit_code = 1
            self.stop()

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

    def tick(self) -> None:
        now = self.clock()
        self._heartbeat = now
        assert self.liveness is not None
        readings = self.liveness.readings()
        try:
            result = self.engine.tick(now, readings, wall=self.wall_clock(),
                                      settings=self._settings.values)
        except Exception as exc:  # noqa: BLE001 - the tick must never die (property 1)
            self.log_once(exc)
            result = self.engine.fail_safe(now, readings, exc)
        self.ticks += 1
        try:
            self._apply(result)
            if not self._closing:
                self.liveness.probe_quiet(now, result)
            self.store.save(self.engine.strategies)
            if self.feedin is not None:
                self.feedin.after_tick(now, self._owns_name())
        except Exception as exc:  # noqa: BLE001 - publishing or saving must not end the loop either
            self.log_once(exc, "publishing or saving after a tick failed; the next tick retries")

    def log_once(self, exc: BaseException,
                 what: str = "tick failed, publishing fail-safe limits") -> None:
        kind = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if kind not in self._logged_errors:
            self._logged_errors.add(kind)
            log.exception("%s (%s)", what, kind)

    def _apply(self, result: TickResult) -> None:
        assert self.service is not None
        publish(self.service, result, page_values(self), self.log_once)
        self.last = result
        for event in result.events:
            log.log(event.level, "%s", event)
        self.store.save_packs(result)

    def _owns_name(self) -> bool:
        """Only the instance that owns the bus name writes state: a second copy that failed to
        register must not overwrite what the running one saved."""
        return self.service is not None and self.service.registered

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
        if self.liveness is not None:
            self.liveness.cancel()
        self.store.save_packs(self.last)
        self.store.stop(self.engine.strategies)
        if self.feedin is not None:
            await self.feedin.close(self._owns_name())
        if self._name is not None:
            self._name.cancel()
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
        reload_daemon(self)

    def select_battery(self) -> None:
        """service.select_as_battery, in the background: a hung localsettings must not hold
        up the ticks."""
        if self.settings is None or self.service is None:
            return
        if self._selection is not None and not self._selection.done():
            self._selection.cancel()
        self._selection = asyncio.get_running_loop().create_task(apply_config_switch(
            self.settings, self.service["/DeviceInstance"], self.store,
            self.config.service.select_as_battery))

    # ----- watchdog and status -------------------------------------------------------------

    def start_watchdog(self) -> threading.Thread:
        return start_watchdog(self.config.safety.watchdog_timeout, self.clock,
                              lambda: self._heartbeat, self._stopped.is_set)

    def status(self) -> StatusReport:
        return status_report(self)


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
