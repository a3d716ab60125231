"""Shared fixtures: a private dbus-daemon per test module and connections to it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from dbus_fast.aio import MessageBus

from aggbatt.sim.privatebus import PrivateBus, start_private_bus
from tests.gxhelpers import Gx


@pytest.fixture(scope="module")
def private_bus() -> Iterator[PrivateBus]:
    bus = start_private_bus()
    try:
        yield bus
    finally:
        bus.close()


@pytest.fixture
def bus_address(private_bus: PrivateBus) -> str:
    return private_bus.address


@pytest.fixture
async def connect(bus_address: str) -> AsyncIterator:
    """Factory for connections to the private bus; all are closed after the test."""
    opened: list[MessageBus] = []

    async def _connect() -> MessageBus:
        bus = await MessageBus(bus_address=bus_address).connect()
        opened.append(bus)
        return bus

    yield _connect
    for bus in opened:
        bus.disconnect()


@pytest.fixture
def gx(tmp_path: Path, bus_address: str) -> Iterator[Gx]:
    """A fake GX device: service dir under svscan, /data-like root, the private bus."""
    sandbox = Gx(tmp_path / "gx", bus_address)
    try:
        yield sandbox
    finally:
        sandbox.stop_svscan()


@pytest.fixture
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This machine's local time zone is Europe/Berlin (CET/CEST, with daylight-saving changes)."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
