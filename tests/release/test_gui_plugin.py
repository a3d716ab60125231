"""The gui-v2 plugin: built from gui-v2/ like the release does, its pages loaded from the plugin's
own resource in an offscreen QML engine against stand-ins for the gui-v2 types (tests/gui), fed
with what the engine publishes, and a screenshot saved to docs/ for the README.

Qt runs in the Python of the `gui` extra (.venv-gui, made by scripts/test) as a subprocess, so
the rest of the suite does not need PySide6. What the stand-ins cannot prove: that the real
gui-v2 lays the pages out the same way; they do prove that the pages load, use only the names the
stand-ins declare, read every value through the device's service uid, and follow value changes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from aggbatt.core.engine import Engine, ServiceReading
from aggbatt.core.pages import info_values
from aggbatt.daemon.paths import PRODUCT_ID
from tests import factories
from tests.factories import SB, fast_config
from tests.gxhelpers import REPO

SCREENSHOT = REPO / "docs" / "gui-plugin.png"
# A browser (MQTT) uid: a page that hard-codes "dbus/" would show nothing.
SERVICE_UID = "mqtt/battery/100"


def qt_python() -> str:
    candidates = [os.environ.get("AGGBATT_QT_PYTHON"), str(REPO / ".venv-gui" / "bin" / "python")]
    for exe in candidates:
        if exe and Path(exe).is_file():
            probe = subprocess.run([exe, "-c", "import PySide6.QtQuick"], capture_output=True)
            if probe.returncode == 0:
                return exe
    pytest.skip("PySide6 (the gui extra) is not installed; scripts/test installs it into .venv-gui")


def reading(n: int, name: str, **values: Any) -> ServiceReading:
    return factories.reading(f"{SB}ttyUSB{n}", {
        "/ProductName": "SerialBattery(JKBMS)", "/Serial": f"JK-{n}", "/CustomName": name,
        "/Dc/0/Voltage": 53.2, "/Dc/0/Current": 6.0, "/Soc": 71.0,
        "/Info/MaxChargeVoltage": 55.2, "/Info/MaxChargeCurrent": 100.0,
        "/Info/MaxDischargeCurrent": 150.0, "/Info/ChargeMode": "Bulk",
    }, **values)


def published() -> dict[str, Any]:
    """What the daemon publishes for a bank of three packs, one blocking charge, one frozen."""
    engine = Engine(fast_config())
    packs = [reading(0, "Rack A", **{"/Dc/0/Voltage": 53.21, "/Dc/0/Current": 12.4}),
             reading(1, "Rack B", **{"/Info/MaxChargeCurrent": 0.0, "/Soc": 69.5}),
             reading(2, "Rack C")]
    engine.tick(0.0, packs)
    later = [packs[0], packs[1], factories.reading(packs[2].service, packs[2].values,
                                                   last_change=-20.0, appeared_at=-20.0)]
    frozen = engine.tick(0.2, later[:2] + [later[2]])
    values = {path: value for path, value in frozen.values.items() if value is not None}
    values.update(info_values(current_source="victron", soc_strategy="coulomb_counter",
                              charge_strategy="own",
                              balancing={"last_balancing": "2026-11-20", "phase": "idle"},
                              next_due=date(2026, 12, 4), feedin_guard="idle"))
    return {k: v for k, v in values.items() if v is not None}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    python = qt_python()
    work = tmp_path_factory.mktemp("gui")
    plugin = work / "aggbatt.json"
    build = subprocess.run([python, str(REPO / "scripts" / "lib" / "guiplugin.py"), str(plugin),
                            "--version", "test"], capture_output=True, text=True, timeout=60)
    assert build.returncode == 0, build.stderr
    values = published()
    scenario = {"plugin": str(plugin), "serviceUid": SERVICE_UID, "productId": PRODUCT_ID,
                "values": values,
                "updates": {"/Packs/0/State": "offline", "/Packs/0/Reason": "service gone",
                            "/Info/MaxChargeVoltage": 54.0}}
    (work / "scenario.json").write_text(json.dumps(scenario), encoding="utf-8")
    shot = work / "shot.png"
    run = subprocess.run([python, str(REPO / "tests" / "gui" / "qmlcheck.py"),
                          str(work / "scenario.json"), str(work / "report.json"), str(shot)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, SCREENSHOT)
    result: dict[str, Any] = json.loads((work / "report.json").read_text(encoding="utf-8"))
    result["plugin"] = json.loads(plugin.read_text(encoding="utf-8"))
    result["published"] = values
    return result


def test_the_plugin_declares_its_pages_for_the_aggregates_own_product_id(report):
    plugin = report["plugin"]
    assert plugin["name"] == "aggbatt"
    assert plugin["minRequiredVersion"] == "v1.2.13"
    assert plugin["resource"]
    pids = {i["productId"] for i in plugin["integrations"]}
    assert pids == {f"0x{PRODUCT_ID:X}"}
    assert not pids & {"0xBA77", "0xBA44"}
    assert {i["url"] for i in plugin["integrations"]} == {
        "qrc:/aggbatt/PageAggbattPacks.qml", "qrc:/aggbatt/PageAggbattLimits.qml"}


def test_every_page_loads_without_a_qml_warning(report):
    assert report["warnings"] == []
    for step in ("packs", "limits", "pack"):
        assert report["steps"][step]["loaded"], step


def test_the_packs_page_shows_one_row_per_pack_with_state_values_and_limits(report):
    rows = report["steps"]["packs"]["items"]
    assert sorted(rows) == ["pack0", "pack1", "pack2"]
    assert rows["pack0"]["text"] == "Rack A"
    assert rows["pack0"]["secondaryText"] == "online  53.21 V  12.4 A  71 %"
    assert rows["pack0"]["caption"] == "CVL 55.20 V  CCL 100.0 A  DCL 150.0 A"
    assert rows["pack1"]["caption"].endswith("blocks charge: CCL 0")
    assert rows["pack2"]["secondaryText"].startswith("offline")
    reason = report["published"]["/Packs/2/Reason"]
    assert rows["pack2"]["caption"].startswith(reason)
    assert "data 20 s old" in rows["pack2"]["caption"]
    holds = report["published"]["/Packs/2/Holds"]
    assert rows["pack2"]["caption"].endswith(f"; still counts: {holds}")


def test_rows_follow_value_changes(report):
    rows = report["steps"]["packs_after_update"]["items"]
    assert rows["pack0"]["secondaryText"].startswith("offline")
    assert rows["pack0"]["caption"].startswith("service gone")
    assert report["steps"]["limits_after_update"]["items"]["cvl"]["value"] == 54.0


def test_a_row_opens_that_packs_details(report):
    assert report["pushes"] == [{"page": "qrc:/aggbatt/PageAggbattPack.qml", "title": "Rack B",
                                 "slot": 1}]
    items = report["steps"]["pack"]["items"]
    assert items["state"]["secondaryText"] == "online"
    assert items["ccl"]["value"] == 0.0
    assert items["soc"]["value"] == 69.5
    assert items["blockingCharge"]["secondaryText"] == "yes"
    assert items["blockingDischarge"]["secondaryText"] == "no"
    assert items["blockingReason"]["secondaryText"] == "charge: CCL 0"
    assert items["service"]["secondaryText"] == "com.victronenergy.battery.ttyUSB1"
    assert items["reason"]["visible"] is False


def test_the_limits_page_shows_each_limit_with_what_sets_it_and_the_decisions(report):
    items = report["steps"]["limits"]["items"]
    published = report["published"]
    assert items["ccl"]["value"] == published["/Info/MaxChargeCurrent"] == 0.0
    assert items["chargeLimitation"]["secondaryText"] == published["/Info/ChargeLimitation"]
    assert items["dischargeLimitation"]["secondaryText"] == published["/Info/DischargeLimitation"]
    assert items["balancingPhase"]["secondaryText"] == "idle"
    assert items["balancingPhase"]["caption"] == "last 2026-11-20, next due 2026-12-04"
    assert items["chargeMode"]["secondaryText"] == "Bulk"
    assert items["feedInGuard"]["secondaryText"] == "idle"
    assert items["currentSource"]["secondaryText"] == "victron"
    assert items["socStrategy"]["secondaryText"] == "coulomb_counter"


def test_pages_read_values_only_through_the_device_service_uid():
    for page in (REPO / "gui-v2").glob("*.qml"):
        text = page.read_text(encoding="utf-8")
        assert "dbus/" not in text and "mqtt/" not in text, page.name
        assert "serviceUid" in text, page.name
