"""`aggbatt demo` end to end: private bus, simulated packs, the daemon, the live table."""

from __future__ import annotations

import io

from aggbatt.demo import DemoOptions, run_demo
from tests.daemonharness import fast_config


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
