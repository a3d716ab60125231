"""Load the gui-v2 plugin's pages from its JSON in an offscreen Qt Quick window, against the
stand-ins in this folder, and report what the pages show. Run by tests/release/test_gui_plugin.py with
the Python that has PySide6 (the `gui` extra), so the test suite itself does not need Qt.

Usage: qmlcheck.py SCENARIO.json REPORT.json SCREENSHOT.png

SCENARIO: {"plugin": path of the plugin JSON, "serviceUid": ..., "productId": int,
           "values": {path: value}, "updates": {path: value}}
Values are keyed by the aggregate's path; the page sees them under serviceUid + path. Steps:
the two device-list pages with `values`; the Packs page again after `updates`; a tap on the
second pack row and the page it opens. The report holds, per step, every named item's texts, the
pages opened by taps, and every Qt warning. The screenshot shows the Packs, pack and Limits pages.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ["QT_QPA_PLATFORM"] = "offscreen"

from PySide6.QtCore import (  # noqa: E402 - the platform must be chosen before Qt loads
    Property,
    QMetaObject,
    QObject,
    QResource,
    QUrl,
    Signal,
    Slot,
    qInstallMessageHandler,
)
from PySide6.QtGui import QColor, QGuiApplication, QImage, QPainter  # noqa: E402
from PySide6.QtQml import qmlRegisterSingletonInstance  # noqa: E402
from PySide6.QtQuick import QQuickItem, QQuickView  # noqa: E402

HERE = Path(__file__).resolve().parent
WIDTH, HEIGHT = 800, 900  # taller than a GX screen, so every row of a page is laid out at once

WRAPPER = """
import QtQuick
import Victron.VenusOS

Item {
	id: root
	property url page
	property int slot: -1
	property string pageTitle
	readonly property Item loader: pageLoader
	width: %(width)d
	height: %(height)d

	Device {
		id: device
		serviceUid: "%(uid)s"
		productId: %(pid)d
	}
	Loader {
		id: pageLoader
		anchors.fill: parent
	}
	onPageChanged: {
		var properties = { "device": device, "title": root.pageTitle }
		if (root.slot >= 0) {
			properties.slot = root.slot
		}
		pageLoader.setSource(root.page, properties)
	}
}
"""


class FakeBus(QObject):
    """What VeQuickItem reads (uid -> value) and what the page manager was asked to open."""

    revisionChanged = Signal()

    def __init__(self) -> None:
        super().__init__()
        self._values: dict[str, Any] = {}
        self._revision = 0
        self.pushes: list[dict[str, Any]] = []

    def _get_revision(self) -> int:
        return self._revision

    revision = Property(int, _get_revision, notify=revisionChanged)

    @Slot(str, result="QVariant")
    def value(self, uid: str) -> Any:
        return self._values.get(uid)

    @Slot(str, str, int)
    def pushed(self, page: str, title: str, slot: int) -> None:
        self.pushes.append({"page": page, "title": title, "slot": slot})

    def feed(self, values: dict[str, Any]) -> None:
        self._values.update(values)
        self._revision += 1
        self.revisionChanged.emit()


def named_items(item: QQuickItem, out: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    name = item.objectName()
    if name:
        out[name] = {key: item.property(key) for key in
                     ("text", "secondaryText", "caption", "displayText", "visible")}
        value = item.property("value")
        if isinstance(value, (int, float)):
            out[name]["value"] = value
    for child in item.childItems():
        named_items(child, out)
    return out


def main(scenario_path: str, report_path: str, shot_path: str) -> int:
    scenario = json.loads(Path(scenario_path).read_text(encoding="utf-8"))
    plugin = json.loads(Path(scenario["plugin"]).read_text(encoding="utf-8"))
    warnings: list[str] = []
    qInstallMessageHandler(lambda kind, context, message: warnings.append(message))
    app = QGuiApplication([])
    resource = base64.b64decode(plugin["resource"])
    if not QResource.registerResourceData(resource):
        print("the plugin's resource does not load", file=sys.stderr)
        return 2
    bus = FakeBus()
    qmlRegisterSingletonInstance(FakeBus, "AggbattStandIns", 1, 0, "FakeBus", bus)
    uid = scenario["serviceUid"]
    bus.feed({uid + path: value for path, value in scenario["values"].items()})

    view = QQuickView()
    view.engine().addImportPath(str(HERE))
    view.setColor(QColor("black"))
    wrapper = Path(report_path).with_suffix(".wrapper.qml")
    wrapper.write_text(WRAPPER % {"width": WIDTH, "height": HEIGHT, "uid": uid,
                                  "pid": scenario["productId"]}, encoding="utf-8")
    view.setSource(QUrl.fromLocalFile(str(wrapper)))
    root = view.rootObject()
    if root is None:
        print("\n".join(str(e) for e in view.errors()), file=sys.stderr)
        return 2
    view.show()
    loader = root.property("loader")

    def show(url: str, title: str, slot: int = -1) -> tuple[dict[str, Any], QImage]:
        root.setProperty("slot", slot)
        root.setProperty("pageTitle", title)
        root.setProperty("page", QUrl(url))
        for _ in range(5):
            app.processEvents()
        page = loader.property("item")
        texts = named_items(page, {}) if page is not None else {}
        return {"url": url, "loaded": page is not None, "items": texts}, view.grabWindow()

    pages = {i["title"]: i for i in plugin["integrations"] if i.get("type") == 2}
    report: dict[str, Any] = {"integrations": plugin["integrations"], "steps": {}}
    shots: list[QImage] = []
    for key, title in (("packs", "Packs"), ("limits", "Limits and decisions")):
        report["steps"][key], shot = show(pages[title]["url"], title)
        shots.append(shot)
    bus.feed({uid + path: value for path, value in scenario["updates"].items()})
    for _ in range(5):
        app.processEvents()
    page = loader.property("item")
    report["steps"]["limits_after_update"] = {"items": named_items(page, {})}
    report["steps"]["packs_after_update"], _ = show(pages["Packs"]["url"], "Packs")
    row = next((item for item in page_items(loader.property("item")) if item.objectName() == "pack1"),
               None)
    if row is not None:
        QMetaObject.invokeMethod(row, "clicked")
    report["pushes"] = list(bus.pushes)
    if bus.pushes:
        opened = bus.pushes[-1]
        report["steps"]["pack"], shot = show(opened["page"], opened["title"], opened["slot"])
        shots.insert(1, shot)
    report["warnings"] = warnings
    Path(report_path).write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    save_side_by_side(shots, Path(shot_path))
    return 0


def page_items(item: QQuickItem | None) -> list[QQuickItem]:
    if item is None:
        return []
    found = [item]
    for child in item.childItems():
        found.extend(page_items(child))
    return found


def save_side_by_side(shots: list[QImage], out: Path) -> None:
    gap = 16
    width = sum(s.width() for s in shots) + gap * (len(shots) - 1)
    height = max(s.height() for s in shots)
    image = QImage(width, height, QImage.Format.Format_RGB32)
    image.fill(QColor("#3a3a3a"))
    painter = QPainter(image)
    x = 0
    for shot in shots:
        painter.drawImage(x, 0, shot)
        x += shot.width() + gap
    painter.end()
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(str(out))


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
