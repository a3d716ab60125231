"""The status endpoint on the aggregate's own connection: GetStatus and ForgetMissingPacks.

The interface and the report's shape are in aggbatt.daemon.status_api, shared with
`aggbatt status`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import asdict, is_dataclass
from typing import TYPE_CHECKING, Any, cast

from dbus_fast import Message, MessageType

from aggbatt import __version__
from aggbatt.bus.busitem import CallFailed, call, dbus_message
from aggbatt.daemon.selection import selection_status
from aggbatt.daemon.status_api import (
    ACCESS_DENIED,
    FORGET_REFUSED,
    STATUS_INTERFACE,
    SelectionReport,
    StatusReport,
)

if TYPE_CHECKING:
    from aggbatt.daemon.main import Daemon

log = logging.getLogger("aggbatt")

BATTERY_PREFIX = "com.victronenergy.battery."


def current_status(daemon: Daemon) -> dict[str, Any]:
    """Which current source is in use, why not the configured one, shunts not found."""
    report = getattr(daemon.engine.strategies.current, "status", None)
    return report() if callable(report) else {"source": daemon.config.current.source}


def charge_status(daemon: Daemon) -> dict[str, Any] | None:
    """The charge strategy's own report with its feed-in guard; None when it gives none."""
    return daemon.feedin.status() if daemon.feedin is not None else None


def status_report(daemon: Daemon) -> StatusReport:
    assert daemon.service is not None
    last = daemon.last
    packs = [asdict(p) if is_dataclass(p) else dict(p) for p in (last.packs if last else ())]
    report: StatusReport = {
        "service": daemon.service.name,
        "version": __version__,
        "ticks": daemon.ticks,
        "aggregate": {p: daemon.service[p] for p in daemon.service.paths()},
        "packs": packs,
        "config": {
            "soc": daemon.config.soc.strategy,
            "current": daemon.config.current.source,
            "charge": daemon.config.charge.strategy,
        },
        "current_source": current_status(daemon),
        "not_answering": ([asdict(u) for u in daemon.monitor.unanswered()]
                          if daemon.monitor else []),
        "selection": cast(SelectionReport, selection_status(
            daemon.store, daemon.config.service.select_as_battery)),
    }
    charge = charge_status(daemon)
    if charge is not None:
        report["own_charge"] = charge
    return report


class StatusEndpoint:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._refused_uids: set[int | None] = set()  # callers of ForgetMissingPacks told off once

    def handle(self, msg: Message) -> Message | bool | None:
        """A message handler of the aggregate's connection."""
        if msg.message_type is not MessageType.METHOD_CALL or msg.interface != STATUS_INTERFACE:
            return None
        if msg.member == "GetStatus":
            return Message.new_method_return(
                msg, "s", [json.dumps(status_report(self.daemon), default=str)])
        service = self.daemon.service
        if msg.member == "ForgetMissingPacks" and service is not None:
            bus = service.bus
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
        daemon = self.daemon
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
            daemon.tick()  # the packs on the bus right now, not at the last tick
            forgotten = daemon.engine.forget_missing()
            if forgotten:
                log.info("forgot packs no longer on the bus: %s", ", ".join(forgotten))
                daemon.tick()
            return Message.new_method_return(msg, "as", [forgotten])
        except Exception as exc:  # noqa: BLE001 - the caller gets an answer, the daemon runs on
            daemon.log_once(exc, "ForgetMissingPacks failed")
            return Message.new_error(msg, FORGET_REFUSED, f"nothing forgotten: {exc}")

    async def _bus_daemon(self, member: str, signature: str = "",
                          body: list[Any] | None = None) -> Message | None:
        """The bus daemon's reply; None when it answered with an error."""
        assert self.daemon.service is not None
        try:
            return await call(self.daemon.service.bus, dbus_message(member, signature, body), 2.0)
        except CallFailed as exc:
            if exc.error_name is None:
                raise
            return None

    async def _caller_uid(self, sender: str | None) -> int | None:
        """The caller's Unix user as the bus daemon saw it connect; None when it cannot say
        (an anonymous or a TCP connection)."""
        reply = await self._bus_daemon("GetConnectionUnixUser", "s", [sender or ""])
        if reply is None:
            return None
        return int(reply.body[0])

    async def _unread_batteries(self) -> list[str]:
        """Battery services on the bus that the monitor holds no values of (its scan failed or
        is still running), besides our own."""
        monitor = self.daemon.monitor
        assert monitor is not None
        reply = await self._bus_daemon("ListNames")
        if reply is None:
            raise RuntimeError("the bus daemon did not list the services on the bus")
        followed = monitor.services
        own = self.daemon.config.service.name
        return sorted(n for n in reply.body[0]
                      if n.startswith(BATTERY_PREFIX) and n != own
                      and not (n in followed and followed[n].values))
