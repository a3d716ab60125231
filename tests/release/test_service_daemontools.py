"""service/run and service/log/run under Debian's daemontools, with the real daemon.

The service directory is in place before svscan starts, so svscan starts it at its first scan
(no 5 s rescan wait). Each test has its own GX sandbox; the private bus is per module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.gxhelpers import PYTHON_TAG, REPO, Gx, build_release, missing_tools, wait_for

pytestmark = [
    pytest.mark.bus,
    pytest.mark.skipif(bool(missing_tools()),
                       reason=f"needs daemontools and dbus-send: apt-get install daemontools "
                              f"dbus-bin (missing: {', '.join(missing_tools())})"),
]


def place_release(gx: Gx, tarball: Path) -> Path:
    """What aggbatt-ctl install does, by hand: unpack, link current, config, service copy."""
    releases = gx.root / "releases"
    releases.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(releases)
    unpacked = next(releases.iterdir())
    version = (unpacked / "VERSION").read_text().strip()
    unpacked.rename(releases / version)
    (gx.root / "current").symlink_to(f"releases/{version}")
    (gx.root / "state").mkdir()
    shutil.copy(releases / version / "config.example.toml", gx.root / "config.toml")
    shutil.copytree(REPO / "service", gx.service)
    return releases / version


def test_run_execs_the_daemon_with_limits_and_logs_with_timestamps(gx: Gx) -> None:
    place_release(gx, build_release(gx.dist, "1.2.3"))
    gx.start_svscan()
    pid = wait_for(gx.healthy_pid, 20, "the daemon to own its bus name")
    # One exec: the supervised pid is the Python process itself, no shell in between.
    assert os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(sys.executable)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    assert [a.decode() for a in argv[1:]] == [
        "-s", "-m", "aggbatt.cli", "run", "--config", f"{gx.root}/config.toml",
        "--state-dir", f"{gx.root}/state", "--bus", "system"]
    environ = dict(e.split(b"=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in e)
    assert environ[b"PYTHONUNBUFFERED"] == b"1"
    # Victron's softlimit values for 64-bit machines.
    limits = Path(f"/proc/{pid}/limits").read_text()
    if shutil.which("softlimit") and os.uname().machine in ("x86_64", "aarch64"):
        assert "Max address space         400000000" in limits
        assert "Max data size             100000000" in limits
    log_pid = wait_for(lambda: gx.service_pid(gx.service / "log"), 10, "the log service")
    log_argv = Path(f"/proc/{log_pid}/cmdline").read_bytes().split(b"\0")[:-1]
    assert [a.decode() for a in log_argv] == ["multilog", "t", "s25000", "n4", str(gx.log_dir)]
    banner = wait_for(lambda: [line for line in gx.log_text().splitlines() if "*** starting" in line], 10,
                      "the banner in the log")
    assert banner[0].startswith("@4000")  # TAI64N stamp from multilog t
    assert f"*** starting aggbatt 1.2.3 ({PYTHON_TAG}, {os.uname().machine}, dbus-fast system" in banner[0]


def test_sigterm_kill_and_restart(gx: Gx) -> None:
    place_release(gx, build_release(gx.dist, "1.0.0"))
    gx.start_svscan()
    first = wait_for(gx.healthy_pid, 20, "the daemon to own its bus name")
    (gx.root / "state" / "mine.json").write_text('{"kept": true}\n')

    subprocess.run(["svc", "-d", str(gx.service)], check=True, timeout=10)
    wait_for(lambda: ": down " in gx.svstat(), 10, "svc -d to stop the daemon")
    assert gx.owner_pid() is None  # the bus name is released
    assert "INFO aggbatt: stopped" in wait_for(gx.log_text, 5, "the log")

    subprocess.run(["svc", "-u", str(gx.service)], check=True, timeout=10)
    second = wait_for(gx.healthy_pid, 20, "the daemon to come back after svc -u")
    assert second != first

    os.kill(second, 9)
    third = wait_for(lambda: (p := gx.healthy_pid()) and p != second and p, 20,
                     "supervise to restart the killed daemon")
    assert third != second
    assert (gx.root / "state" / "mine.json").read_text() == '{"kept": true}\n'
    assert gx.log_text().count("*** starting aggbatt 1.0.0") == 3


def test_python_version_guard_pauses_instead_of_looping(gx: Gx) -> None:
    place_release(gx, build_release(gx.dist, "9.9.9", tag="cp399"))
    gx.start_svscan()
    refusal = "release 9.9.9 is built for cp399 but"
    wait_for(lambda: refusal in gx.log_text(), 20, "the guard's log line")
    pid = gx.service_pid()
    # supervise restarts a process after 1 s; a loop would have logged the line again by now.
    time.sleep(1.5)
    assert gx.log_text().count(refusal) == 1
    assert gx.service_pid() == pid
    assert f"install the aggbatt bundle built for {PYTHON_TAG}" in gx.log_text()
    assert "waiting 60 s before exiting" in gx.log_text()
    assert gx.owner_pid() is None
    # svc -d ends the pause at once: the pause is the process itself, nothing is orphaned.
    subprocess.run(["svc", "-d", str(gx.service)], check=True, timeout=10)
    wait_for(lambda: ": down " in gx.svstat(), 5, "the paused guard to stop")
    assert not [p for p in gx.live_processes() if " sleep " in f" {p}"]


def test_guard_in_command_mode_fails_at_once(gx: Gx) -> None:
    place_release(gx, build_release(gx.dist, "9.9.8", tag="cp399"))
    result = subprocess.run(["sh", str(gx.service / "run"), "-c", "print('ran')"], env=gx.env,
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 1
    assert "built for cp399" in result.stdout and "ran" not in result.stdout
    assert "waiting" not in result.stdout


def test_command_mode_uses_the_release_code(gx: Gx) -> None:
    release = place_release(gx, build_release(gx.dist, "2.0.0"))
    result = subprocess.run(
        ["sh", str(gx.service / "run"), "-c", "import aggbatt, os; print(aggbatt.__file__)"],
        env=gx.env, capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip() == f"{gx.root}/current/app/aggbatt/__init__.py"
    assert release.is_dir()


def test_missing_config_is_refused_with_a_hint(gx: Gx) -> None:
    place_release(gx, build_release(gx.dist, "1.0.1"))
    (gx.root / "config.toml").unlink()
    env = dict(gx.env, AGGBATT_GUARD_SLEEP="0")
    result = subprocess.run(["sh", str(gx.service / "run")], env=env, capture_output=True,
                            text=True, timeout=20)
    assert f"no config at {gx.root}/config.toml" in result.stdout
    assert "aggbatt-ctl enable" in result.stdout
    assert gx.owner_pid() is None


def test_arch_libs_and_bundled_dbus_fast_are_chosen_by_the_machine(gx: Gx) -> None:
    """lib/<uname -m> goes on the path; lib/dbus-fast only when the interpreter has none."""
    # An interpreter without site-packages stands in for a Venus image without dbus-fast and
    # pydantic.
    bare = gx.base / "python-without-site-packages"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    bare.chmod(0o755)
    release = place_release(gx, build_release(gx.dist, "1.0.0"))
    show_path = ["-c", "import sys; print('\\n'.join(sys.path))"]

    def path_with(python: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(gx.service / "run"), *show_path],
                              env=dict(gx.env, AGGBATT_PYTHON=python), capture_output=True,
                              text=True, timeout=20)

    no_core = path_with(str(bare))
    assert no_core.returncode == 1
    assert f"has no pydantic-core for {os.uname().machine}" in no_core.stdout
    arch_lib = release / "lib" / os.uname().machine
    (arch_lib / "pydantic_core").mkdir(parents=True)
    (arch_lib / "pydantic_core" / "__init__.py").write_text("")
    (release / "lib" / "dbus-fast" / "dbus_fast-2.46.4.dist-info").mkdir(parents=True)
    paths = path_with(sys.executable).stdout.splitlines()
    assert f"{gx.root}/current/lib/{os.uname().machine}" in paths
    assert f"{gx.root}/current/lib/dbus-fast" not in paths  # the venv brings dbus-fast
    without = path_with(str(bare))
    assert f"{gx.root}/current/lib/dbus-fast" in without.stdout.splitlines(), without.stdout
