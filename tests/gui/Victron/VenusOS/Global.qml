// Stand-in for gui-v2's Global: only the page manager, which records what a page asks to open.
pragma Singleton
import QtQuick
import AggbattStandIns

QtObject {
	readonly property QtObject pageManager: QtObject {
		function pushPage(page, properties) {
			FakeBus.pushed(String(page), properties.title || "", properties.slot === undefined ? -1 : properties.slot)
		}
	}
}
