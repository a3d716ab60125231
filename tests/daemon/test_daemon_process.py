"""`aggbatt run` as a process: what a supervisor sees."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from aggbatt.sim.privatebus import start_private_bus

CLI = [sys.executable, "-m", "aggbatt.cli"]


def _wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            seen.append(line)
            if needle in line:
                return "".join(seen)
        else:
            time.sleep(0.02)
    raise AssertionError(f"{needle!r} not logged within {timeout} s: {''.join(seen)}")


def test_losing_the_bus_exits_non_zero_so_the_supervisor_restarts_us(tmp_path):
    bus = start_private_bus()
    proc = subprocess.Popen([*CLI, "run", "--bus", bus.address, "--state-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_line(proc, "published com.victronenergy.battery.aggregate", 15)
        bus.close()
        assert proc.wait(timeout=10) == 1
        out = proc.stdout.read() if proc.stdout else ""
        assert "lost the D-Bus connection" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        bus.close()


def test_an_invalid_config_pauses_before_exiting_under_supervise(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[freshness]\nstale_afterr = 3\n")
    env = {**os.environ, "AGGBATT_ERROR_PAUSE": "1.5"}
    started = time.monotonic()
    done = subprocess.run([*CLI, "run", "--config", str(config), "--bus", "unix:path=/nonexistent"],
                          capture_output=True, text=True, env=env, timeout=20)
    assert done.returncode == 2
    assert time.monotonic() - started >= 1.5
    assert "freshness.stale_afterr" in done.stderr
    assert "did you mean" in done.stderr


def test_an_unreadable_state_file_is_ignored_instead_of_a_crash_loop(tmp_path):
    """A state file the JSON parser cannot take used to end every start with exit 1."""
    (tmp_path / "packs.json").write_text('{"version": 1, "known": ' + "[" * 100_000 + "]" * 100_000 + "}")
    bus = start_private_bus()
    proc = subprocess.Popen([*CLI, "run", "--bus", bus.address, "--state-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = _wait_for_line(proc, "published com.victronenergy.battery.aggregate", 15)
        assert "packs.json is not valid JSON" in out and "ignored" in out
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        bus.close()


def test_a_second_instance_exits_without_touching_the_state_files(tmp_path):
    bus = start_private_bus()
    args = [*CLI, "run", "--bus", bus.address, "--state-dir", str(tmp_path)]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_line(first, "published com.victronenergy.battery.aggregate", 15)
        before = {p.name: p.stat().st_ino for p in tmp_path.iterdir()}
        assert "packs.json" in before
        second = subprocess.run(args, capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert "another instance" in second.stderr + second.stdout
        assert {p.name: p.stat().st_ino for p in tmp_path.iterdir()} == before
    finally:
        first.terminate()
        first.wait(timeout=10)
        bus.close()
