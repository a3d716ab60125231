"""The watchdog ends a process whose tick loop stalled, so daemontools restarts it."""

from __future__ import annotations

import subprocess
import sys
import time

STALLED = """
import sys, time
from pathlib import Path
from aggbatt.config import config_from_dict
from aggbatt.daemon import Daemon
daemon = Daemon(config_from_dict({"safety": {"watchdog_timeout": 2.0}}), None, Path(sys.argv[1]))
daemon.start_watchdog()
time.sleep(30)  # the event loop would be blocked like this: no tick updates the heartbeat
print("still alive")
"""


def test_a_stalled_tick_loop_exits_non_zero_within_the_timeout(tmp_path):
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", STALLED, str(tmp_path)], capture_output=True,
                          text=True, timeout=20)
    elapsed = time.monotonic() - started
    assert done.returncode == 3
    assert "stalled" in done.stdout + done.stderr
    assert "still alive" not in done.stdout
    assert elapsed < 15
