"""What the benchmark runs: which banks, with which builds of dbus-fast, for how long."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Bank:
    packs: int
    cells: int

    @property
    def label(self) -> str:
        return f"{self.packs}x{self.cells}"

    @classmethod
    def parse(cls, text: str) -> Bank:
        try:
            packs, cells = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bank {text!r}: write PACKSxCELLS, e.g. 16x24") from None
        if packs < 1 or cells < 1:
            raise argparse.ArgumentTypeError(f"bank {text!r}: packs and cells must be >= 1")
        return cls(packs, cells)


@dataclass(frozen=True)
class Build:
    name: str  # "compiled" or "pure"
    python: str  # interpreter whose dbus-fast has (or lacks) the compiled extensions


@dataclass
class Options:
    # 16 x 24 is the bank the goals are set for; the others show how the cost grows with packs,
    # up to 32, the most a stock bus's per-connection match-rule limit must allow.
    banks: list[Bank] = field(default_factory=lambda: [Bank(n, 24) for n in (1, 2, 4, 8, 16, 32)])
    builds: list[Build] = field(default_factory=lambda: [Build("compiled", sys.executable)])
    duration: float = 60.0
    warmup: float = 10.0
    reactions: int = 50
    stale_events: int = 5
    stale_after: float = 2.0
    readmit_after: float = 1.0
    interval: float = 1.0
    current_per_pack: float = 5.0
    sample_every: float = 0.5
    profile_dir: Path | None = None
    seed: int = 1
    velib_python: str | None = None
    get_items_calls: int = 200


# A few seconds in all: checks that the benchmark itself works, measures nothing worth reading.
QUICK = {"banks": [Bank(2, 4)], "duration": 1.0, "warmup": 0.3, "reactions": 3, "stale_events": 1,
         "stale_after": 0.6, "readmit_after": 0.2, "interval": 0.2, "sample_every": 0.25,
         "get_items_calls": 10}
SYSTEM_PYTHON = "/usr/bin/python3"
