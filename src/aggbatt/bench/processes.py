"""The processes of one run: the simulated bank's command channel and the measured processes.

Every process is started by its interpreter and program, reaped with a grace period, and read line
by line with a timeout, so a wedged child makes the run fail with a message instead of hanging it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggbatt.bench.options import Bank, Build, Options
from aggbatt.bench.probes import Meter

READY_TIMEOUT = 30.0


class Sim:
    """The bank process and its stdin/stdout command channel (simproc.py)."""

    def __init__(self, proc: asyncio.subprocess.Process, services: list[str]) -> None:
        self.proc = proc
        self.services = services

    @classmethod
    async def start(cls, address: str, bank: Bank, opts: Options) -> Sim:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aggbatt.bench.simproc", "--bus", address,
            "--packs", str(bank.packs), "--cells", str(bank.cells), "--interval", str(opts.interval),
            "--bank-current", str(opts.current_per_pack * bank.packs),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        try:
            line = await readline(proc, READY_TIMEOUT, "the simulated bank")
        except RuntimeError:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            raise
        return cls(proc, json.loads(line)["ready"])

    async def command(self, text: str) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{text}\n".encode())
        await self.proc.stdin.drain()
        answer = json.loads(await readline(self.proc, 10.0, "the simulated bank"))
        if "error" in answer:
            raise RuntimeError(f"simulator: {answer['error']}")
        return float(answer["t"])

    async def stop(self) -> None:
        if self.proc.returncode is None and self.proc.stdin is not None:
            self.proc.stdin.write(b"quit\n")
            self.proc.stdin.close()
        await reap(self.proc)


async def readline(proc: asyncio.subprocess.Process, timeout: float, what: str) -> str:
    assert proc.stdout is not None
    try:
        raw = await asyncio.wait_for(proc.stdout.readline(), timeout)
    except asyncio.TimeoutError:
        raise RuntimeError(f"{what} did not answer within {timeout:g} s") from None
    if not raw:
        raise RuntimeError(f"{what} exited (code {await proc.wait()})")
    return raw.decode().strip()


async def reap(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    if proc.returncode is None:
        try:
            await asyncio.wait_for(proc.wait(), grace)
            return
        except asyncio.TimeoutError:
            proc.kill()
    await proc.wait()


@dataclass
class Measured:
    """A process under measurement (floors.py) and its SIGUSR1 report file."""

    role: str
    proc: asyncio.subprocess.Process
    report: Path
    meter: Meter

    async def counts(self) -> dict[str, Any]:
        self.report.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5.0
        while not self.report.exists():
            if time.monotonic() > deadline or self.proc.returncode is not None:
                raise RuntimeError(f"{self.role} (pid {self.proc.pid}) wrote no report")
            await asyncio.sleep(0.01)
        counts: dict[str, Any] = json.loads(self.report.read_text(encoding="utf-8"))
        return counts

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
        await reap(self.proc)


async def spawn(role: str, name: str, build: Build, workdir: Path, options: list[str],
                 rest: Sequence[str] = (), *, log: Path | None = None,
                 program: Sequence[str] | None = None) -> Measured:
    report_file = workdir / f"{name}.report.json"
    cmd = ([*program, "--report", str(report_file), *options] if program is not None else
           [build.python, "-m", "aggbatt.bench.floors", "--report", str(report_file), *options,
            role, *rest])
    if log is not None:
        out = open(log, "wb")  # noqa: SIM115 - the child holds it; closed right after the spawn
        try:
            proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=out, stderr=asyncio.subprocess.STDOUT)
        finally:
            out.close()
    else:
        proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE)
    return Measured(name, proc, report_file, Meter(proc.pid))


async def wait_ready(measured: Measured) -> None:
    line = await readline(measured.proc, READY_TIMEOUT, measured.role)
    if line != "ready":
        raise RuntimeError(f"{measured.role} said {line!r} instead of ready")
