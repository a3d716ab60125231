"""The state store serves any stateful strategy through its hooks alone.

A strategy that keeps state names its file and trades plain dicts; the store restores it at start,
writes what it hands over once the bus name is ours, and keeps a failed record for the next tick
when the strategy says so. Nothing in the daemon knows the strategy's class.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from aggbatt.config import default_config
from aggbatt.core.strategies import StateFile, build_strategies
from aggbatt.daemon.persist import write_json_atomic
from aggbatt.daemon.reload import carry_state, rebuild_strategies
from aggbatt.daemon.store import StateStore, stateful

WALL = 1.7e9


class Tally:
    """A made-up SoC strategy that counts its ticks across restarts."""

    state_file = StateFile("tally.json", 3, "the tally", retry=True)

    def __init__(self) -> None:
        self.count = 0
        self.restored: tuple[Any, str | None] | None = None
        self._unsaved = False

    def estimate(self, ctx: Any, current: Any) -> Any:
        raise NotImplementedError

    def tick(self) -> None:
        self.count += 1
        self._unsaved = True

    def restore_state(self, data: Any, problem: str | None, wall: float) -> None:
        self.restored = (data, problem)
        self.count = data["count"] if data is not None else 0

    def state_to_save(self, wall: float) -> dict[str, Any] | None:
        if not self._unsaved:
            return None
        self._unsaved = False
        return {"version": 3, "count": self.count}

    def state_at_stop(self, wall: float) -> dict[str, Any] | None:
        return {"version": 3, "count": self.count}

    def state_to_carry(self, wall: float) -> dict[str, Any] | None:
        return {"version": 3, "count": self.count}


def _with(tally: Tally) -> Any:
    return dataclasses.replace(build_strategies(default_config()), soc=tally)


def _saved(path: Path) -> Any:
    return json.loads(path.read_text())


def test_a_new_stateful_strategy_is_restored_and_saved_by_its_hooks(tmp_path: Path) -> None:
    tally = Tally()
    strategies = _with(tally)
    assert stateful(strategies) == [tally]
    store = StateStore(tmp_path, lambda: WALL)
    store.restore(stateful(strategies))
    assert tally.restored is not None and tally.restored[0] is None
    assert "does not exist" in (tally.restored[1] or "")

    tally.tick()
    store.save(strategies)
    assert _saved(tmp_path / "tally.json") == {"version": 3, "count": 1}

    again = Tally()
    StateStore(tmp_path, lambda: WALL).restore([again])
    assert again.count == 1 and again.restored == ({"version": 3, "count": 1}, None)


def test_only_the_owner_of_the_name_writes_and_the_latest_record_waits(tmp_path: Path) -> None:
    owner = False
    tally = Tally()
    strategies = _with(tally)
    store = StateStore(tmp_path, lambda: WALL, owner=lambda: owner)
    tally.tick()
    store.save(strategies)
    tally.tick()
    store.stop(strategies)
    assert not (tmp_path / "tally.json").exists()
    owner = True
    store.save(strategies)
    assert _saved(tmp_path / "tally.json") == {"version": 3, "count": 2}


def test_a_failed_write_is_retried_when_the_strategy_asks(tmp_path: Path) -> None:
    blocked = tmp_path / "state"
    blocked.write_text("a file where the state dir should be")
    tally = Tally()
    strategies = _with(tally)
    store = StateStore(blocked, lambda: WALL)
    tally.tick()
    store.save(strategies)
    blocked.unlink()
    store.save(strategies)  # nothing new from the strategy: the kept record goes out
    assert _saved(blocked / "tally.json") == {"version": 3, "count": 1}


def test_a_rebuilt_stateful_strategy_takes_its_predecessors_state(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "tally.json", {"version": 3, "count": 40})
    old = Tally()
    old.count = 7
    store = StateStore(tmp_path, lambda: WALL)
    strategies = _with(old)
    fresh = Tally()
    assert carry_state(strategies.soc, fresh, store) is fresh
    assert fresh.count == 7  # in memory, not the 40 on disk
    assert rebuild_strategies(strategies, default_config(), (), store) is strategies
