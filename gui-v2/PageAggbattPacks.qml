// One row per pack of the aggregate: name, state, V, A, SoC, and under it the reason it is not
// online or its limits and blocking. A row opens that pack's details.
import QtQuick
import Victron.VenusOS
import "Format.js" as Format

DeviceListPluginPage {
	id: root

	readonly property string packs: root.device.serviceUid + "/Packs/"

	VeQuickItem {
		id: packCount
		uid: root.packs + "Count"
	}

	GradientListView {
		model: packCount.valid ? Math.min(packCount.value, 32) : 0

		delegate: ListNavigation {
			id: row

			required property int index
			readonly property string slot: root.packs + index + "/"

			objectName: "pack" + index
			text: packName.valid ? packName.value : "#" + (index + 1)
			secondaryText: Format.packSummary(packState.value, voltage.value, current.value, soc.value)
			caption: Format.packCaption(reason.value, dataAge.value, holds.value, cvl.value, ccl.value,
					dcl.value, blocking.value)
			onClicked: Global.pageManager.pushPage("qrc:/aggbatt/PageAggbattPack.qml",
					{ "title": row.text, "device": root.device, "slot": row.index })

			VeQuickItem { id: packName; uid: row.slot + "Name" }
			VeQuickItem { id: packState; uid: row.slot + "State" }
			VeQuickItem { id: reason; uid: row.slot + "Reason" }
			VeQuickItem { id: dataAge; uid: row.slot + "DataAge" }
			VeQuickItem { id: holds; uid: row.slot + "Holds" }
			VeQuickItem { id: voltage; uid: row.slot + "Dc/0/Voltage" }
			VeQuickItem { id: current; uid: row.slot + "Dc/0/Current" }
			VeQuickItem { id: soc; uid: row.slot + "Soc" }
			VeQuickItem { id: cvl; uid: row.slot + "Info/MaxChargeVoltage" }
			VeQuickItem { id: ccl; uid: row.slot + "Info/MaxChargeCurrent" }
			VeQuickItem { id: dcl; uid: row.slot + "Info/MaxDischargeCurrent" }
			VeQuickItem { id: blocking; uid: row.slot + "BlockingReason" }
		}
	}
}
