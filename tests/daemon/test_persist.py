"""Atomic state files: every reader sees a whole old or a whole new file, whatever happens."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from aggbatt.core.strategies.feedin import Mode
from aggbatt.daemon import Daemon
from aggbatt.daemon.persist import MAX_BYTES, StateRead, read_json, write_json_atomic
from aggbatt.daemon.selection import read_selection
from aggbatt.daemon.store import StateStore
from tests.factories import fast_config


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
from aggbatt.daemon.persist import write_json_atomic
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


HOSTILE = {
    "nested beyond the parser's recursion": b"[" * 100_000 + b"]" * 100_000,
    "nested deep enough to break every repr": b'{"version": 1, "x": ' + b"[" * 600 + b"]" * 600 + b"}",
    "an integer of 5,000 digits": b'{"version": 1, "charge_ah": ' + b"9" * 5000 + b"}",
    "an integer too long for a float": b'{"version": 1, "charge_ah": ' + b"9" * 400 + b"}",
    "more than the size bound": b'{"version": 1, "pad": "' + b"x" * MAX_BYTES + b'"}',
}


@pytest.mark.parametrize("content", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_content_is_corrupt_not_an_exception(tmp_path: Path, content: bytes) -> None:
    target = tmp_path / "soc.json"
    target.write_bytes(content)
    read = read_json(target, 1)
    assert read.data is None
    assert read.problem is not None and "ignored" in read.problem and not read.absent


def test_a_fifo_is_refused_at_once_instead_of_blocking_the_start(tmp_path: Path) -> None:
    target = tmp_path / "packs.json"
    os.mkfifo(target)
    result: list[StateRead] = []
    reader = threading.Thread(target=lambda: result.append(read_json(target, 1)), daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # unblock the reader so the test run can go on
        os.close(os.open(target, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(5)
    assert result and "not a regular file" in (result[0].problem or "")


STATE_FILES = ("soc.json", "packs.json", "balancing.json", "feedin.json", "selection.json")


@pytest.mark.parametrize("name", STATE_FILES)
@pytest.mark.parametrize("content", HOSTILE.values(), ids=HOSTILE.keys())
def test_every_state_file_falls_back_to_its_default(tmp_path: Path, name: str,
                                                     content: bytes) -> None:
    """Each reader of a state file starts from its safe default instead of raising."""
    (tmp_path / name).write_bytes(content)
    config = fast_config(soc={"strategy": "coulomb_counter"}, charge={"strategy": "own"},
                         feedin={"guard": True})
    daemon = Daemon(config, None, tmp_path)
    assert daemon.store.load_known_packs() == []
    assert daemon.engine.strategies.soc.counter.charge is None
    assert daemon.feedin is not None and daemon.feedin.guard is not None
    assert daemon.feedin.guard.mode is Mode.IDLE
    assert read_selection(StateStore(tmp_path, lambda: 0.0))[0] is None
    assert (tmp_path / name).read_bytes() == content  # ignored, not destroyed: kept to inspect


def test_a_selection_record_that_could_not_be_written_back_is_unusable(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "selection.json", {"version": 1, "by": "config", "settings": {
        "/Settings/SystemSetup/BmsInstance": {"previous": [[1]], "written": 100}}})
    saved, problem = read_selection(StateStore(tmp_path, lambda: 0.0))
    assert saved is None and problem is not None
