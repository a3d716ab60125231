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
# Half of what a velib DbusMonitor (dbus-python + GLib) spends only receiving the packs,
# a bounded memory peak, and GetItems on the aggregate served from a cache.
CPU_VS_VELIB = 0.5
RSS_PEAK_MB = 40.0
GET_ITEMS_MS = 0.05
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
        target("cpu_vs_floor_velib", run["ratios"].get("cpu_daemon_over_floor_velib"), CPU_VS_VELIB,
               f"daemon CPU <= {CPU_VS_VELIB} x floor_velib"),
        target("rss_peak", daemon.get("rss_peak_mb"), rss_limit,
               f"daemon RSS peak <= import floor + {RSS_MARGIN_MB:g} MB"),
        target("rss_peak_mb", daemon.get("rss_peak_mb"), RSS_PEAK_MB,
               f"daemon RSS peak <= {RSS_PEAK_MB:g} MB"),
        target("get_items_ms", run.get("get_items", {}).get("daemon_cpu_ms_per_call"), GET_ITEMS_MS,
               f"daemon CPU per GetItems on the aggregate <= {GET_ITEMS_MS:g} ms"),
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
    ("bank", 6), ("build", 9), ("daemon%", 8), ("velib%", 7), ("needed%", 8), ("all%", 7),
    ("d/velib", 12), ("d/needed", 12), ("d/all", 12), ("RSS peak", 15), ("imports", 8),
    ("in/pack/s", 10), ("wake/s", 7), ("rules", 6), ("GetItems ms", 13), ("CCL0 p95 ms", 12),
    ("stale s", 8), ("start s", 10),
)


def table(runs: Sequence[Mapping[str, Any]]) -> str:
    """One row per bank and build; targets marked met/MISSED (set by the performance goals for 16x24)."""
    lines = ["  ".join(name.rjust(width) for name, width in COLUMNS)]
    for run in runs:
        p = run["processes"]
        d, fv = p["daemon"], p.get("floor_velib", {})
        fn, fa, fi = p.get("floor_needed", {}), p.get("floor_all", {}), p.get("import_floor", {})
        t = {x["name"]: x for x in run["targets"]}
        ccl, stale = run["reaction"]["ccl0_ms"], run["reaction"]["stale_s"]
        pct = [None if x.get("cpu_s_per_s") is None else 100 * x["cpu_s_per_s"]
               for x in (d, fv, fn, fa)]
        ratios = run["ratios"]
        rss_met = t["rss_peak_mb"]
        cells = [
            run["bank"], run["build"] + ("+prof" if run.get("profile") else ""),
            *(_num(v, ".2f") for v in pct),
            _judged(ratios.get("cpu_daemon_over_floor_velib"), ".2f", t["cpu_vs_floor_velib"]),
            _judged(ratios["cpu_daemon_over_floor_needed"], ".2f", t["cpu_vs_floor_needed"]),
            _judged(ratios["cpu_daemon_over_floor_all"], ".2f", t["cpu_vs_floor_all"]),
            _judged(d.get("rss_peak_mb"), ".1f", rss_met), _num(fi.get("rss_peak_mb"), ".1f"),
            _num(d.get("received_per_pack_per_s"), ".2f"), _num(d.get("wakeups_per_s"), ".0f"),
            _num(d.get("match_rules"), "d"),
            _judged(run.get("get_items", {}).get("daemon_cpu_ms_per_call"), ".3f",
                    t["get_items_ms"]),
            _judged(ccl["p95"], ".1f", t["ccl0_p95_ms"]), _num(stale["median"], ".2f"),
            _judged(run.get("first_valid_s"), ".2f", t["first_valid_s"]),
        ]
        lines.append("  ".join(c.rjust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True)))
    return "\n".join(lines)


LEGEND = """\
daemon%/velib%/needed%/all%: CPU seconds per wall second x 100 (% of one core) over the window,
  from /proc (run time of every thread of the process and its children). velib = floor_velib, a
  dbus-python + GLib client that scans every pack and handles every signal of every pack as a
  velib DbusMonitor does (the reference aggregator's receiving, without its logic); needed =
  floor_needed, a dbus-fast client holding the daemon's exact match rules and doing nothing;
  all = floor_all, a dbus-fast client receiving every signal of every pack and doing nothing.
  d/velib, d/needed, d/all: the daemon's CPU over each floor's.
RSS peak: the daemon's VmHWM in MB (goal <= 40 MB); imports: the import floor's VmHWM, a process
  that only imports asyncio, dbus-fast, pydantic and the daemon's modules.
in/pack/s: D-Bus messages the daemon read per pack per second; wake/s: times per second its main
  thread was woken (voluntary context switches); rules: its match rules on the bus (dbus-daemon
  allows 512 per connection).
GetItems ms: the daemon's CPU per GetItems on the aggregate, over back-to-back calls after the
  window, less what it uses anyway.
CCL0 p95: from a pack publishing CCL 0 to a client seeing the aggregate's ItemsChanged with CCL 0.
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
