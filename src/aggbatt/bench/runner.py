"""Run the benchmark: `python -m aggbatt.bench [options]` (scripts/bench sets up both builds).

Every bank runs with every build, one after another, each in its own temporary directory on its
own private bus (bankrun.py); the results go to one JSON file and one table (report.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from aggbatt.bench import report
from aggbatt.bench.bankrun import run_one
from aggbatt.bench.options import QUICK, SYSTEM_PYTHON, Bank, Build, Options


def velib_python(candidate: str = SYSTEM_PYTHON) -> str | None:
    """`candidate` when it can run the velib-style floor (dbus-python and GLib), else None."""
    try:
        done = subprocess.run([candidate, "-c", "import dbus.mainloop.glib, gi.repository.GLib"],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return candidate if done.returncode == 0 else None


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _check_build(run: dict[str, Any], build: Build) -> None:
    compiled = {p.get("dbus_fast_compiled") for p in run["processes"].values()} - {None}
    if build.name == "pure" and True in compiled:
        raise RuntimeError(f"{build.python}: dbus-fast loaded a compiled extension in the pure build")
    if build.name == "compiled" and False in compiled:
        _say(f"warning: {build.python}: dbus-fast runs without its compiled extensions")


def _profile_text(path: Path, limit: int = 30) -> str:
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)
    return out.getvalue()


# ----- command line ------------------------------------------------------------------------------

def _host() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return {"machine": platform.machine(), "cpus": os.cpu_count(), "cpu_model": model,
            "kernel": platform.release(), "python": platform.python_version()}


def parse_args(argv: Sequence[str] | None) -> tuple[Options, Path]:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="CPU, memory and reaction time of aggbatt at bank scale, against floors that "
        "only receive the same input. Prints one table and writes JSON.")
    parser.add_argument("--banks", default=None, help="PACKSxCELLS list (default 1x24,2x24,4x24,8x24,16x24,32x24)")
    parser.add_argument("--duration", type=float, help="measured window in s (default 60)")
    parser.add_argument("--warmup", type=float, help="s between start-up and the window (default 10)")
    parser.add_argument("--reactions", type=int, help="CCL-0 events per run (default 50)")
    parser.add_argument("--stale-events", type=int, help="freeze events per run (default 5)")
    parser.add_argument("--stale-after", type=float, help="the daemon's stale_after, s (default 2)")
    parser.add_argument("--pure-python", metavar="PYTHON",
                        help="also run with this interpreter, whose dbus-fast has no compiled "
                        "extensions (scripts/bench passes .venv-purepy)")
    parser.add_argument("--builds", default=None,
                        help="compiled,pure (default: compiled, plus pure with --pure-python)")
    parser.add_argument("--out", type=Path, help="JSON file (default bench-results/bench-<date>.json)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="cProfile the daemon over the window into DIR (inflates its CPU)")
    parser.add_argument("--velib-python", metavar="PYTHON", default=SYSTEM_PYTHON,
                        help="interpreter with dbus-python and GLib for the velib-style floor "
                        f"(default {SYSTEM_PYTHON}; left out when it lacks them)")
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds on a tiny bank: checks the benchmark, measures nothing")
    args = parser.parse_args(argv)
    opts = Options(**QUICK) if args.quick else Options()  # type: ignore[arg-type]
    if args.banks:
        opts.banks = [Bank.parse(b) for b in args.banks.split(",") if b.strip()]
    for name in ("duration", "warmup", "reactions", "stale_events", "stale_after"):
        if getattr(args, name) is not None:
            setattr(opts, name, getattr(args, name))
    wanted = (args.builds.split(",") if args.builds
              else ["compiled"] + (["pure"] if args.pure_python else []))
    builds = []
    for name in wanted:
        if name == "compiled":
            builds.append(Build("compiled", sys.executable))
        elif name == "pure":
            if not args.pure_python or not Path(args.pure_python).exists():
                parser.error("the pure build needs --pure-python PYTHON (scripts/bench creates "
                             ".venv-purepy)")
            builds.append(Build("pure", args.pure_python))
        else:
            parser.error(f"unknown build {name!r}: compiled or pure")
    opts.builds = builds
    opts.profile_dir = args.profile
    opts.velib_python = velib_python(args.velib_python)
    if opts.velib_python is None:
        _say(f"{args.velib_python} has no dbus-python or GLib: the velib-style floor is left out")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return opts, args.out or report.default_path(Path("bench-results"), stamp)


async def run_all(opts: Options) -> list[dict[str, Any]]:
    runs = []
    for build in opts.builds:
        for bank in opts.banks:
            _say(f"bench: {bank.label} with {build.name} dbus-fast ({opts.warmup:g} s warm-up, "
                 f"{opts.duration:g} s window, {opts.reactions} CCL-0 and {opts.stale_events} "
                 "stale events)")
            with tempfile.TemporaryDirectory(prefix="aggbatt-bench-") as tmp:
                run = await run_one(bank, build, opts, Path(tmp))
            _check_build(run, build)
            runs.append(run)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    opts, out = parse_args(argv)
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    runs = asyncio.run(run_all(opts))
    options = asdict(replace(opts, profile_dir=None))
    options["profile_dir"] = None if opts.profile_dir is None else str(opts.profile_dir)
    report.write_json(out, {"schema": 1, "started": started, "host": _host(), "options": options,
                            "runs": runs})
    print(report.table(runs))
    print()
    print(report.LEGEND)
    if opts.profile_dir is not None:
        for run in runs:
            path = Path(run["profile"])
            if path.exists():
                text_path = path.with_suffix(".txt")
                text_path.write_text(_profile_text(path), encoding="utf-8")
                print(f"profile of {run['bank']} {run['build']}: {text_path}")
    print(f"JSON: {out}")
    return 0
