// Stand-in for gui-v2's VeQuickItem: the value behind a uid, from the test's fake backend.
import QtQuick
import AggbattStandIns

QtObject {
	property string uid
	property bool invalidate: true
	readonly property var value: {
		FakeBus.revision
		return FakeBus.value(uid)
	}
	readonly property bool valid: value !== undefined && value !== null
}
