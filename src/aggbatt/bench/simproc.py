"""The simulated bank in its own process, driven over stdin: `python -m aggbatt.bench.simproc`.

The packs must not run inside a measured process, and the runner must make a pack publish a
change at a moment it knows, so the bank lives here and takes one command per line on stdin:

| command     | effect                                              | answer (JSON line on stdout)  |
|-------------|-----------------------------------------------------|-------------------------------|
| block N     | pack N blocks charging (CCL 0) and publishes at once | {"t": time of the publish}    |
| unblock N   | pack N allows charging again, publishes at once     | {"t": time of the publish}    |
| freeze N    | pack N stops publishing (driver hung)               | {"t": its last publish}       |
| thaw N      | pack N publishes again from its next slot           | {"t": now}                    |
| quit        | all packs leave the bus, the process exits          | -                             |

Times are time.monotonic(), the system-wide CLOCK_MONOTONIC the runner reads too. Packs are
numbered from 1. The first line on stdout is {"ready": [service names]} once every pack and the
settings service are on the bus.

Publishing: every `interval` the bank takes one physics step, and each pack publishes in its own
slot of that interval (pack i at i/N of it), as independent serialbattery drivers polling at 1 Hz
do, instead of all packs in one burst. The packs carry a real BMS's noise (current, voltage and
every cell change at each publish), so every publish sends the same share of paths a real
serialbattery sends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from dbus_fast.aio import MessageBus

from aggbatt.sim.bank import SimBank
from aggbatt.sim.pack_model import PackParams
from aggbatt.sim.settings import SimSettings


def bank_params(packs: int, cells: int) -> list[PackParams]:
    return [PackParams(cells=cells, capacity_ah=280.0, soc=50.0, serial=f"BENCH{i + 1:03d}",
                       noise_a=0.05, noise_mv=1.0)
            for i in range(packs)]


class BankProcess:
    def __init__(self, bank: SimBank, interval: float) -> None:
        self.bank = bank
        self.interval = interval
        self.last_publish = [0.0] * len(bank.packs)

    async def publish_forever(self) -> None:
        loop = asyncio.get_running_loop()
        packs = self.bank.packs
        slot = self.interval / len(packs)
        deadline = loop.time()
        while True:
            self.bank.step(self.interval)
            for i, pack in enumerate(packs):
                if pack.publish():
                    self.last_publish[i] = time.monotonic()
                deadline += slot
                await asyncio.sleep(max(0.0, deadline - loop.time()))

    def command(self, line: str) -> dict[str, float] | None:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise ValueError(f"bad command {line!r}")
        verb, index = parts[0], int(parts[1]) - 1
        pack = self.bank.packs[index]
        if verb in ("block", "unblock"):
            pack.block_charge(verb == "block")
            pack.publish()
            self.last_publish[index] = now = time.monotonic()
            return {"t": now}
        if verb == "freeze":
            pack.freeze(True)
            return {"t": self.last_publish[index]}
        if verb == "thaw":
            pack.freeze(False)
            return {"t": time.monotonic()}
        raise ValueError(f"unknown command {verb!r}")


async def _stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _say(data: object) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


async def serve(address: str, packs: int, cells: int, interval: float, bank_current: float) -> None:
    with tempfile.TemporaryDirectory(prefix="aggbatt-bench-sim-") as tmp:
        settings = SimSettings(await MessageBus(bus_address=address).connect(),
                               str(Path(tmp) / "settings.json"))
        await settings.start()
        bank = SimBank(bank_params(packs, cells), bank_current=bank_current)
        await bank.start(address)
        proc = BankProcess(bank, interval)
        publisher = asyncio.create_task(proc.publish_forever())
        _say({"ready": [p.service_name for p in bank.packs]})
        reader = await _stdin_lines()
        try:
            while True:
                raw = await reader.readline()
                line = raw.decode().strip()
                if not raw or line == "quit":
                    break
                try:
                    _say(proc.command(line))
                except (ValueError, IndexError) as exc:
                    _say({"error": str(exc)})
        finally:
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)
            await bank.stop()
            await settings.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aggbatt.bench.simproc")
    parser.add_argument("--bus", required=True)
    parser.add_argument("--packs", type=int, required=True)
    parser.add_argument("--cells", type=int, required=True)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--bank-current", type=float, default=0.0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.bus, args.packs, args.cells, args.interval, args.bank_current))
    return 0


if __name__ == "__main__":
    sys.exit(main())
