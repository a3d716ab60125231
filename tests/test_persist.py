"""Atomic state files: every reader sees a whole old or a whole new file, whatever happens."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from aggbatt.persist import read_json, write_json_atomic


def test_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "state" / "soc.json"
    write_json_atomic(target, {"version": 1, "charge_ah": 123.5})
    assert read_json(target, 1).data == {"version": 1, "charge_ah": 123.5}
    assert [p.name for p in target.parent.iterdir()] == ["soc.json"]


def test_missing_truncated_garbage_and_wrong_version(tmp_path: Path) -> None:
    target = tmp_path / "soc.json"
    assert read_json(target, 1).problem and "does not exist" in read_json(target, 1).problem
    target.write_text('{"version": 1, "charge_')
    assert "not valid JSON" in (read_json(target, 1).problem or "")
    target.write_bytes(b"\x00\xff\xfe garbage")
    assert read_json(target, 1).data is None
    target.write_text("[1, 2]")
    assert "JSON object" in (read_json(target, 1).problem or "")
    target.write_text('{"version": 7}')
    assert "version 7" in (read_json(target, 1).problem or "")


WRITER = """
import sys
from aggbatt.persist import write_json_atomic
i = int(sys.argv[2])
print("ready", flush=True)
while True:
    i += 1
    write_json_atomic(sys.argv[1], {"version": 1, "counter": i, "pad": "x" * 4000})
"""


def test_kill_9_at_random_moments_never_leaves_a_broken_file(tmp_path: Path) -> None:
    target = tmp_path / "soc.json"
    write_json_atomic(target, {"version": 1, "counter": 0, "pad": ""})
    rng = random.Random(4)
    last = 0
    for _ in range(15):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(last)], stdout=subprocess.PIPE)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        read = read_json(target, 1)
        assert read.data is not None, read.problem
        assert read.data["counter"] >= last
        last = read.data["counter"]
        json.loads(target.read_text())
    assert last > 0
