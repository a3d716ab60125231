"""Numbers -> statistics, the performance goals, one table and the JSON file.

The targets are goals the benchmark reports as met or missed, never a pass/fail verdict: the issue
sets them for the 16 x 24 bank; they are shown for every bank so trends are visible.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Issue 8 item 4.
CPU_VS_NEEDED = 1.3
CPU_VS_ALL = 0.6
RSS_MARGIN_MB = 5.0
CCL0_P95_MS = 50.0
FIRST_VALID_S = 2.0
TARGET_BANK = "16x24"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float], missed: int = 0) -> dict[str, Any]:
    """n, median, p95, max of the events that happened; `missed` counts the ones that timed out."""
    if not values:
        return {"n": 0, "missed": missed, "median": None, "p95": None, "max": None, "samples": []}
    return {
        "n": len(values),
        "missed": missed,
        "median": percentile(values, 50),
        "p95": percentile(values, 95),
        "max": max(values),
        "samples": [round(v, 6) for v in values],
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def targets(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each performance goal with this run's value and met/missed (None: not measured)."""
    procs = run["processes"]
    daemon = procs["daemon"]
    imports = procs.get("import_floor", {})
    rss_limit = (None if imports.get("rss_peak_mb") is None
                 else imports["rss_peak_mb"] + RSS_MARGIN_MB)
    ccl = run["reaction"]["ccl0_ms"]

    def target(name: str, value: float | None, limit: float | None, text: str) -> dict[str, Any]:
        met = None if value is None or limit is None else value <= limit
        return {"name": name, "value": value, "limit": limit, "met": met, "target": text,
                "set_for": TARGET_BANK}

    return [
        target("cpu_vs_floor_needed", run["ratios"]["cpu_daemon_over_floor_needed"], CPU_VS_NEEDED,
               f"daemon CPU <= {CPU_VS_NEEDED} x floor_needed"),
        target("cpu_vs_floor_all", run["ratios"]["cpu_daemon_over_floor_all"], CPU_VS_ALL,
               f"daemon CPU <= {CPU_VS_ALL} x floor_all"),
        target("rss_peak", daemon.get("rss_peak_mb"), rss_limit,
               f"daemon RSS peak <= import floor + {RSS_MARGIN_MB:g} MB"),
        target("ccl0_p95_ms", ccl["p95"] if ccl["missed"] == 0 else None, CCL0_P95_MS,
               f"CCL-0 reaction p95 <= {CCL0_P95_MS:g} ms"),
        target("first_valid_s", run.get("first_valid_s"), FIRST_VALID_S,
               f"first valid aggregate <= {FIRST_VALID_S:g} s after start"),
    ]


# ----- the table -------------------------------------------------------------------------------

def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _judged(value: float | None, fmt: str, target: Mapping[str, Any]) -> str:
    mark = {True: " met", False: " MISSED", None: ""}[target["met"]]
    return _num(value, fmt) + mark


COLUMNS = (
    ("bank", 6), ("build", 9), ("daemon%", 8), ("needed%", 8), ("all%", 7),
    ("d/needed", 12), ("d/all", 12), ("RSS peak", 15), ("mean", 6), ("imports+5", 10),
    ("in/s", 7), ("out/s", 6), ("CCL0 p50", 9), ("p95 ms", 12), ("max", 6), ("stale s", 8),
    ("start s", 10),
)


def table(runs: Sequence[Mapping[str, Any]]) -> str:
    """One row per bank and build; targets marked met/MISSED (set by the performance goals for 16x24)."""
    lines = ["  ".join(name.rjust(width) for name, width in COLUMNS)]
    for run in runs:
        p = run["processes"]
        d, fn, fa = p["daemon"], p.get("floor_needed", {}), p.get("floor_all", {})
        t = {x["name"]: x for x in run["targets"]}
        ccl, stale = run["reaction"]["ccl0_ms"], run["reaction"]["stale_s"]
        pct = [None if x.get("cpu_s_per_s") is None else 100 * x["cpu_s_per_s"] for x in (d, fn, fa)]
        cells = [
            run["bank"], run["build"] + ("+prof" if run.get("profile") else ""), _num(pct[0], ".2f"), _num(pct[1], ".2f"), _num(pct[2], ".2f"),
            _judged(run["ratios"]["cpu_daemon_over_floor_needed"], ".2f", t["cpu_vs_floor_needed"]),
            _judged(run["ratios"]["cpu_daemon_over_floor_all"], ".2f", t["cpu_vs_floor_all"]),
            _judged(d.get("rss_peak_mb"), ".1f", t["rss_peak"]),
            _num(d.get("rss_mean_mb"), ".1f"), _num(t["rss_peak"]["limit"], ".1f"),
            _num(d.get("received_per_s"), ".0f"), _num(d.get("sent_per_s"), ".0f"),
            _num(ccl["median"], ".1f"), _judged(ccl["p95"], ".1f", t["ccl0_p95_ms"]),
            _num(ccl["max"], ".1f"), _num(stale["median"], ".2f"),
            _judged(run.get("first_valid_s"), ".2f", t["first_valid_s"]),
        ]
        lines.append("  ".join(c.rjust(w) for c, (_, w) in zip(cells, COLUMNS)))
    return "\n".join(lines)


LEGEND = """\
daemon%/needed%/all%: CPU seconds per wall second x 100 (% of one core) over the window, from /proc
  (utime+stime of the process and its children). needed = floor_needed, a client holding the
  daemon's exact match rules and doing nothing; all = floor_all, every signal of every battery
  service (what a velib DbusMonitor receives). d/needed, d/all: the daemon's CPU over each floor's.
RSS peak: the daemon's VmHWM in MB; mean: VmRSS over the window; imports+5: the import floor's
  VmHWM + 5 MB (a process that only imports asyncio, dbus-fast, pydantic, config, daemon modules).
in/s, out/s: D-Bus messages the daemon read and wrote per second (counted in-process).
CCL0: from a pack publishing CCL 0 to a client seeing the aggregate's ItemsChanged with CCL 0, ms.
stale s: median from a frozen pack's last publish to the aggregate's NrOfModulesOffline rising.
start s: from spawning `aggbatt run` to the first valid aggregate (limits valid, all packs online).
+prof: the daemon ran under cProfile (--profile), which inflates its CPU figures.
met/MISSED: the performance goals, set for the 16x24 bank; reported, not pass/fail."""


def default_path(directory: Path, stamp: str) -> Path:
    return directory / f"bench-{stamp}.json"


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
