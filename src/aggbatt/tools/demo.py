"""`aggbatt demo`: a private bus, simulated packs, the real daemon and a live table.

Everything runs in one process on a private dbus-daemon, so the demo never touches a real system.
Keys (when stdin is a terminal): 1-9 select a pack, f freeze/unfreeze it, v make it vanish/return,
b block/unblock its charging, l toggle a BMS link loss, q quit. Ctrl-C also quits and stops all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aggbatt.bus.connection import open_bus
from aggbatt.config import Config
from aggbatt.daemon import Daemon
from aggbatt.sim.bank import SimBank
from aggbatt.sim.pack import SimPack
from aggbatt.sim.pack_model import PackParams
from aggbatt.sim.privatebus import start_private_bus
from aggbatt.sim.scenario import load_scenario
from aggbatt.sim.settings import SimSettings

log = logging.getLogger("aggbatt.demo")


@dataclass
class DemoOptions:
    packs: int = 3
    cells: int = 16
    capacities: list[float] = field(default_factory=list)
    scenario: str | None = None
    duration: float | None = None
    interactive: bool = True


def bank_profile(t: float) -> float:
    """A gentle day in one minute: charging at up to 60 A, then discharging at up to 40 A."""
    phase = math.sin(2 * math.pi * t / 60.0)
    return 60.0 * phase if phase > 0 else 40.0 * phase


@dataclass
class PackToggles:
    frozen: bool = False
    gone: bool = False
    blocked: bool = False
    link_lost: bool = False


def _fmt(value: Any, spec: str = ".1f", width: int = 7) -> str:
    if value is None:
        return "---".rjust(width)
    if isinstance(value, (int, float)):
        return format(value, spec).rjust(width)
    return str(value).rjust(width)


def _label(pack: SimPack, status: dict[str, Any]) -> str:
    suffix = pack.service_name.rsplit(".", 1)[-1]
    name = status.get("name")
    return f"{suffix} ({name})"[:18] if name else suffix


def bank_current(bank: SimBank) -> float:
    return bank.profile(bank.time) if bank.profile is not None else bank.bank_current


def render(daemon: Daemon, bank: SimBank, selected: int, toggles: list[PackToggles]) -> str:
    svc = daemon.service
    status = daemon.status()
    lines = ["aggbatt demo: simulated packs on a private D-Bus, the real daemon in between", ""]
    header = f"{'':2}{'pack':<22}{'V':>7}{'A':>7}{'SoC%':>7}{'CVL':>7}{'CCL':>7}{'DCL':>7}  state"
    lines.append(header)
    by_service = {p.get("service"): p for p in status["packs"]}
    for index, pack in enumerate(bank.packs):
        st = by_service.get(pack.service_name, {})
        flags = [name for name, on in vars(toggles[index]).items() if on]
        state = "online" if st.get("online") else f"OFFLINE ({st.get('reason') or 'not seen'})"
        if st.get("holds"):
            state += f", still counts: {st['holds']}"
        lines.append(
            f"{'>' if index == selected else ' '} {index + 1} {_label(pack, st):<18}"
            f"{_fmt(st.get('voltage'), '.2f')}{_fmt(st.get('current'))}{_fmt(st.get('soc'))}"
            f"{_fmt(st.get('cvl'), '.2f')}{_fmt(st.get('ccl'))}{_fmt(st.get('dcl'))}  {state}"
            + (f"  [{', '.join(flags)}]" if flags else "")
        )
    assert svc is not None
    lines += [
        "",
        f"  {'AGGREGATE':<20}{_fmt(svc['/Dc/0/Voltage'], '.2f')}{_fmt(svc['/Dc/0/Current'])}"
        f"{_fmt(svc['/Soc'])}{_fmt(svc['/Info/MaxChargeVoltage'], '.2f')}"
        f"{_fmt(svc['/Info/MaxChargeCurrent'])}{_fmt(svc['/Info/MaxDischargeCurrent'])}",
        f"  packs online {svc['/System/NrOfModulesOnline']}, offline "
        f"{svc['/System/NrOfModulesOffline']}; bank current driven by the simulator "
        f"{bank_current(bank):.1f} A",
        f"  charge limited by:    {svc['/Info/ChargeLimitation'] if '/Info/ChargeLimitation' in svc else '---'}",
        f"  discharge limited by: {svc['/Info/DischargeLimitation'] if '/Info/DischargeLimitation' in svc else '---'}",
        "",
        "  keys: 1-9 select pack, f freeze, v vanish/return, b block charge, l link loss, q quit",
    ]
    return "\n".join(lines)


async def apply_key(key: str, bank: SimBank, selected: int, toggles: list[PackToggles]) -> int:
    if key.isdigit() and 1 <= int(key) <= len(bank.packs):
        return int(key) - 1
    pack: SimPack = bank.packs[selected]
    tog = toggles[selected]
    if key == "f":
        tog.frozen = not tog.frozen
        pack.freeze(tog.frozen)
    elif key == "v":
        tog.gone = not tog.gone
        await (pack.vanish() if tog.gone else pack.reappear())
    elif key == "b":
        tog.blocked = not tog.blocked
        pack.block_charge(tog.blocked)
    elif key == "l":
        tog.link_lost = not tog.link_lost
        pack.link_lost(tog.link_lost)
    return selected


@contextlib.contextmanager
def _cbreak(stream: TextIO) -> Iterator[bool]:
    """Single-key input without echo when stdin is a terminal; restores the terminal on exit."""
    try:
        import termios
        import tty

        fd = stream.fileno()
        old = termios.tcgetattr(fd)
    except (ImportError, OSError, ValueError, AttributeError):
        yield False
        return
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def demo_packs(options: DemoOptions) -> list[PackParams]:
    """The demo's simulated packs: unequal SoCs, and a BMS's reading noise under current."""
    capacities = options.capacities or [280.0] * options.packs
    return [PackParams(cells=options.cells, capacity_ah=c, serial=f"DEMO{i + 1:03d}",
                       soc=55.0 - 5 * i, noise_a=0.05, noise_mv=1.0)
            for i, c in enumerate(capacities)]


async def run_demo(config: Config, options: DemoOptions, out: TextIO = sys.stdout) -> int:
    params = demo_packs(options)
    with start_private_bus() as bus, tempfile.TemporaryDirectory(prefix="aggbatt-demo-") as tmp:
        settings = SimSettings(await open_bus(bus.address), str(Path(tmp) / "settings.json"))
        await settings.start()
        bank = SimBank(params)
        bank.profile = bank_profile
        await bank.start(bus.address)
        bank_task = asyncio.create_task(bank.run(1.0))
        daemon = Daemon(config, bus.address, Path(tmp) / "state")
        await daemon.start()
        loop_task = asyncio.create_task(daemon.run_forever())
        scenario_task = None
        if options.scenario:
            scenario = load_scenario(options.scenario)
            scenario_task = asyncio.create_task(scenario.run(bank))
        toggles = [PackToggles() for _ in bank.packs]
        selected = 0
        keys: asyncio.Queue[str] = asyncio.Queue()
        started = asyncio.get_running_loop().time()
        try:
            with _cbreak(sys.stdin) if options.interactive else contextlib.nullcontext(False) as tty_on:
                if tty_on:
                    asyncio.get_running_loop().add_reader(
                        sys.stdin.fileno(), lambda: keys.put_nowait(sys.stdin.read(1)))
                while True:
                    out.write("\x1b[H\x1b[2J" if out.isatty() else "\n")
                    out.write(render(daemon, bank, selected, toggles) + "\n")
                    out.flush()
                    if options.duration is not None and (
                            asyncio.get_running_loop().time() - started >= options.duration):
                        break
                    try:
                        key = await asyncio.wait_for(keys.get(), 1.0)
                    except asyncio.TimeoutError:
                        continue
                    if key == "q":
                        break
                    selected = await apply_key(key, bank, selected, toggles)
        finally:
            if options.interactive:
                with contextlib.suppress(Exception):
                    asyncio.get_running_loop().remove_reader(sys.stdin.fileno())
            for task in (scenario_task, bank_task):
                if task is not None:
                    task.cancel()
            daemon.stop()
            await asyncio.gather(loop_task, return_exceptions=True)
            await daemon.close()
            await bank.stop()
            await settings.close()
    return 0
