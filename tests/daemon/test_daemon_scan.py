"""The daemon's scan of the packs on a private bus: packs that do not answer GetItems, answer
late, or list far more paths than anyone reads."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

from aggbatt.bus.monitor import MAX_PATHS
from aggbatt.daemon.persist import write_json_atomic
from aggbatt.daemon.store import PACKS_FILE, STATE_VERSION
from aggbatt.sim.bank import SimBank
from aggbatt.tools import status
from tests.busclient import wait_for_values
from tests.daemonharness import running, sim_packs

AGG = "com.victronenergy.battery.aggregate"
MONITOR_LOG = "aggbatt.bus.monitor"
SLOW = "com.victronenergy.battery.sim2"


def known_from_an_earlier_run(tmp_path: Path, *ids: str) -> None:
    write_json_atomic(tmp_path / "state" / PACKS_FILE, {"version": STATE_VERSION, "known": list(ids)})


def lines_about(caplog, text: str, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == MONITOR_LOG and r.levelno == level and text in r.getMessage()]


async def test_the_aggregate_appears_without_waiting_for_a_pack_busy_at_boot(bus_address, tmp_path):
    known_from_an_earlier_run(tmp_path, "P0", "P1")

    def busy(bank: SimBank) -> None:
        bank.pack(2).fail_get_items("hang")

    began = time.monotonic()
    async with running(bus_address, tmp_path, sim_packs(280, 280), prepare=busy) as h:
        # Waiting for the busy pack took two GetItems timeouts (over 10 s) before the name was
        # claimed; the bound is generous on purpose.
        assert time.monotonic() - began < 5.0
        values = await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 1)
        assert values["/System/NrOfModulesOffline"] == 1
        # The driver catches up and answers the scan it held: the pack joins.
        h.bank.pack(2).fail_get_items(None)
        values = await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2)
        assert values["/System/NrOfModulesOffline"] == 0


async def test_a_pack_whose_scan_fails_is_retried_shown_in_status_and_joins_when_it_answers(
        bus_address, tmp_path, caplog):
    caplog.set_level(logging.INFO, MONITOR_LOG)
    known_from_an_earlier_run(tmp_path, "P0", "P1")

    def failing(bank: SimBank) -> None:
        bank.pack(2).fail_get_items("error")

    async with running(bus_address, tmp_path, sim_packs(280, 280), prepare=failing) as h:
        values = await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 1)
        assert values["/System/NrOfModulesOffline"] == 1
        out, err = io.StringIO(), io.StringIO()
        assert await status.main(bus_address, AGG, False, out, err) == 0
        text = out.getvalue()
        assert f"not answering: {SLOW}" in text
        assert f"service(s) on the bus not answering, retried: {SLOW}" in text

        h.bank.pack(2).fail_get_items(None)
        values = await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2)
        assert values["/System/NrOfModulesOffline"] == 0
        out = io.StringIO()
        assert await status.main(bus_address, AGG, False, out, err) == 0
        assert "not answering" not in out.getvalue()
    assert len(lines_about(caplog, SLOW, logging.WARNING)) == 1
    assert any("answers now" in line for line in lines_about(caplog, SLOW, logging.INFO))


async def test_a_pack_listing_more_paths_than_kept_is_still_read_and_logged_once(
        bus_address, tmp_path, caplog):
    caplog.set_level(logging.INFO, MONITOR_LOG)

    def crowded(bank: SimBank) -> None:
        bank.pack(2).add_extra_paths(MAX_PATHS + 500)

    async with running(bus_address, tmp_path, sim_packs(280, 280), prepare=crowded) as h:
        values = await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2)
        assert values["/InstalledCapacity"] == 560
        h.bank.pack(2).block_charge()
        await wait_for_values(h.client, lambda v: v["/Io/AllowToCharge"] == 0)
    [line] = lines_about(caplog, SLOW, logging.WARNING)
    assert f"more than the {MAX_PATHS} kept" in line
