"""The daemon's state store: the one owner of the files in the state dir.

Every file is versioned JSON, read bounded and never raising, written atomically
(aggbatt.daemon.persist). Only the instance that owns the aggregate's bus name writes: a second
copy that failed to register must not overwrite what the running one saved (`owner`).

- packs.json: the known pack ids, written when they change.
- blocks.json: the packs whose last fresh data blocks a direction, written when they change.
- A file per stateful strategy (strategies.Stateful: soc.json for the Coulomb counter,
  balancing.json for the own charge strategy): restored at start, written whenever the strategy
  hands a record over and at shutdown. The strategy names the file and its version; a new stateful
  strategy needs nothing here.
- feedin.json, selection.json and any other record a daemon helper keeps: `read`, `write`,
  `remove`. The `aggbatt select-battery` command uses a store of its own on the same directory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from aggbatt.core.engine import TickResult
from aggbatt.core.strategies import StateFile, Stateful, Strategies, is_stateful
from aggbatt.daemon.persist import StateRead, read_json, write_json_atomic

log = logging.getLogger("aggbatt")

PACKS_FILE = "packs.json"
BLOCKS_FILE = "blocks.json"  # the packs whose last fresh data blocks a direction
STATE_VERSION = 1


def stateful(strategies: Strategies) -> list[Stateful]:
    """The strategies with a state file."""
    return [s for s in strategies.all() if is_stateful(s)]


class StateStore:
    def __init__(self, state_dir: Path, wall_clock: Callable[[], float],
                 owner: Callable[[], bool] = lambda: True) -> None:
        self.state_dir = state_dir
        self.wall_clock = wall_clock
        self.owner = owner
        self._saved_known: frozenset[str] | None = None  # as in packs.json after our last write
        self._known_failing = False
        self._saved_blocks: Mapping[str, tuple[str, ...]] | None = None  # as in blocks.json
        self._blocks_failing = False
        # file name -> (its spec, a strategy's record not written yet: the write failed and the
        # spec says to retry)
        self._pending: dict[str, tuple[StateFile, dict[str, Any]]] = {}

    def path(self, name: str) -> Path:
        return self.state_dir / name

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def read(self, name: str, version: int) -> StateRead:
        return read_json(self.path(name), version)

    def write(self, name: str, record: dict[str, Any]) -> None:
        """Raises OSError when the write fails, and when we do not own the name."""
        self._check_owner(name)
        write_json_atomic(self.path(name), record)

    def remove(self, name: str) -> None:
        """Raises OSError like `write`; a file that is gone already is fine."""
        self._check_owner(name)
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            pass

    def _check_owner(self, name: str) -> None:
        if not self.owner():
            raise PermissionError(f"{self.path(name)} is not written: the aggregate's bus name "
                                  "is not ours")

    # ----- the packs -----------------------------------------------------------------------------

    def load_known_packs(self) -> list[str]:
        read = self.read(PACKS_FILE, STATE_VERSION)
        if read.data is None:
            log.log(logging.INFO if read.absent else logging.WARNING,
                    "no known packs yet (%s)", read.problem)
            return []
        known = read.data.get("known")
        if not isinstance(known, list) or not all(isinstance(k, str) for k in known):
            log.warning("%s holds no list of pack ids; starting without known packs",
                        self.state_dir / PACKS_FILE)
            return []
        return known

    def load_blocks(self) -> dict[str, Any]:
        read = self.read(BLOCKS_FILE, STATE_VERSION)
        blocks = read.data.get("blocks") if read.data is not None else None
        if read.data is not None and not isinstance(blocks, dict):
            log.warning("%s holds no pack blocks; starting without saved blocks",
                        self.state_dir / BLOCKS_FILE)
        return blocks if isinstance(blocks, dict) else {}

    def save_packs(self, result: TickResult | None) -> None:
        """The known packs and their blocks as a tick left them."""
        if result is not None:
            self.save_known_packs(result.known_packs)
            if result.blocks is not None:
                self.save_blocks(result.blocks)

    def save_known_packs(self, known: frozenset[str]) -> None:
        """Write the known packs when they differ from what was last written successfully."""
        if not self.owner() or known == self._saved_known:
            return
        try:
            write_json_atomic(self.state_dir / PACKS_FILE,
                              {"version": STATE_VERSION, "known": sorted(known)})
            self._saved_known = known
            self._known_failing = False
        except OSError as exc:
            if not self._known_failing:  # retried at every tick: one line, not one per tick
                log.error("cannot save known packs to %s: %s", self.state_dir, exc)
            self._known_failing = True

    def save_blocks(self, blocks: Mapping[str, tuple[str, ...]]) -> None:
        """Write the packs' blocks when they differ from what was last written successfully."""
        if not self.owner() or blocks == self._saved_blocks:
            return
        try:
            write_json_atomic(self.state_dir / BLOCKS_FILE, {
                "version": STATE_VERSION,
                "blocks": {pack_id: list(directions) for pack_id, directions in blocks.items()}})
            self._saved_blocks = blocks
            self._blocks_failing = False
        except OSError as exc:
            if not self._blocks_failing:  # retried at every tick: one line, not one per tick
                log.error("cannot save pack blocks to %s: %s", self.state_dir, exc)
            self._blocks_failing = True

    # ----- the strategies ------------------------------------------------------------------------

    def restore(self, strategies: Iterable[Any]) -> None:
        """Hand each stateful strategy its file as read (or why there is none)."""
        for strategy in strategies:
            spec: StateFile = strategy.state_file
            read = self.read(spec.name, spec.version)
            strategy.restore_state(read.data, read.problem, self.wall_clock())

    def save(self, strategies: Strategies) -> None:
        """After a tick: write what the strategies hand over. A strategy keeps its record while
        we do not own the name, so the latest one is written once we do."""
        if not self.owner():
            return
        for strategy in stateful(strategies):
            self._take(strategy.state_file, strategy.state_to_save(self.wall_clock()))
        self._flush()

    def stop(self, strategies: Strategies) -> None:
        if not self.owner():
            return
        for strategy in stateful(strategies):
            self._take(strategy.state_file, strategy.state_at_stop(self.wall_clock()))
        self._flush()

    def _take(self, spec: StateFile, record: dict[str, Any] | None) -> None:
        if record is not None:
            self._pending[spec.name] = (spec, record)

    def _flush(self) -> None:
        for name, (spec, record) in list(self._pending.items()):
            try:
                write_json_atomic(self.state_dir / name, record)
                del self._pending[name]
            except OSError as exc:
                log.error("cannot save %s to %s: %s", spec.what, self.state_dir / name, exc)
                if not spec.retry:
                    del self._pending[name]
