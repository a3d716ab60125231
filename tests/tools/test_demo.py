"""`aggbatt demo` end to end: private bus, simulated packs, the daemon, the live table."""

from __future__ import annotations

import io
from typing import Any

from aggbatt.config import default_config
from aggbatt.core.engine import Engine
from aggbatt.core.snapshot import ServiceReading
from aggbatt.core.validation import PACK_PATHS
from aggbatt.sim.bank import SimBank
from aggbatt.tools.demo import DemoOptions, bank_profile, demo_packs, run_demo
from tests.factories import fast_config


async def test_demo_shows_packs_and_aggregate_and_a_scenario_fault(tmp_path):
    scenario = tmp_path / "freeze.toml"
    scenario.write_text('[[event]]\nat = 0.2\npack = 2\naction = "freeze"\n')
    out = io.StringIO()
    options = DemoOptions(packs=3, cells=16, scenario=str(scenario), duration=3.0,
                          interactive=False)
    assert await run_demo(fast_config(), options, out) == 0
    last = out.getvalue().rsplit("aggbatt demo:", 1)[-1]
    assert "AGGREGATE" in last
    assert "packs online 2, offline 1" in last
    pack2 = next(line for line in last.splitlines() if line.strip().startswith("2 sim2"))
    assert "OFFLINE (no value changed" in pack2


class QuietReadings:
    """Pack readings as the bus monitor keeps them: a stamp moves only when a followed value
    changes, so a pack that reports steady values is quiet."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[dict[str, Any], float]] = {}

    def __call__(self, bank: SimBank, now: float) -> list[ServiceReading]:
        out = []
        for pack in bank.packs:
            values = {k: v for k, v in pack.current_values().items() if k in PACK_PATHS}
            old = self._last.get(pack.service_name)
            changed = now if old is None or old[0] != values else old[1]
            self._last[pack.service_name] = (values, changed)
            out.append(ServiceReading(pack.service_name, values, changed, 0.0))
        return out


def test_demo_bank_keeps_a_blocked_pack_at_ccl_0_for_minutes_at_rest_and_while_others_charge():
    bank = SimBank(demo_packs(DemoOptions(packs=3)))
    bank.pack(2).block_charge(True)
    engine = Engine(default_config())
    readings = QuietReadings()
    charged = []
    for second in range(1200):
        # 5 min at rest, 10 min of the demo's charge/discharge profile, 5 min at rest again
        bank.profile = bank_profile if 300 <= second < 900 else None
        bank.step(1.0)
        result = engine.tick(float(second), readings(bank, float(second)))
        blocked = next(p for p in result.packs if p.name == "DEMO002")
        assert blocked.online, (second, blocked.reason)
        assert result.values["/Info/MaxChargeCurrent"] == 0.0, second
        charged.append(bank.packs[0].current)
    assert max(charged) > 20.0 and min(charged) < -10.0   # the others did charge and discharge


async def test_demo_keeps_a_blocked_quiet_pack_at_ccl_0_while_the_others_charge(tmp_path):
    scenario = tmp_path / "block.toml"
    scenario.write_text('[[event]]\nat = 0.0\npack = 2\naction = "block_charge"\n')
    out = io.StringIO()
    options = DemoOptions(packs=3, cells=16, scenario=str(scenario), duration=5.0,
                          interactive=False)
    # The demo's packs publish once a second: a pack that reports current is live at 2 s; the
    # blocked one carries no current and publishes nothing after its block.
    config = fast_config(freshness={"stale_after": 2.0, "stale_after_idle": 2.0})
    assert await run_demo(config, options, out) == 0
    screens = out.getvalue().split("aggbatt demo:")[3:]      # from 2 s on
    assert len(screens) >= 3
    for screen in screens:
        aggregate = next(line for line in screen.splitlines() if "AGGREGATE" in line).split()
        assert aggregate[5] == "0.0", screen                  # V, A, SoC, CVL, CCL, DCL
        pack2 = next(line for line in screen.splitlines() if line.strip().startswith("2 sim2"))
        assert "online" in pack2 and "OFFLINE" not in pack2
