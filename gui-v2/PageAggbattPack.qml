// One pack of the aggregate, as the aggregate sees it (its /Packs/<slot>/ subtree).
import QtQuick
import Victron.VenusOS
import "Format.js" as Format

Page {
	id: root

	property var device
	property int slot
	readonly property string pack: root.device.serviceUid + "/Packs/" + root.slot + "/"

	GradientListView {
		model: VisibleItemModel {
			ListText {
				objectName: "state"
				text: "State"
				dataItem.uid: root.pack + "State"
				secondaryText: Format.text(dataItem.value)
			}
			ListText {
				objectName: "reason"
				text: "Why not online"
				dataItem.uid: root.pack + "Reason"
				preferredVisible: dataItem.valid && dataItem.value !== ""
				secondaryText: Format.text(dataItem.value)
			}
			ListText {
				objectName: "holds"
				text: "Still counts on the bank"
				dataItem.uid: root.pack + "Holds"
				preferredVisible: dataItem.valid && dataItem.value !== ""
				secondaryText: Format.text(dataItem.value)
			}
			ListText {
				objectName: "age"
				text: "Data age"
				dataItem.uid: root.pack + "DataAge"
				secondaryText: Format.age(dataItem.value)
			}
			ListQuantity {
				objectName: "voltage"
				text: "Voltage"
				dataItem.uid: root.pack + "Dc/0/Voltage"
				unit: VenusOS.Units_Volt_DC
			}
			ListQuantity {
				objectName: "current"
				text: "Current"
				dataItem.uid: root.pack + "Dc/0/Current"
				unit: VenusOS.Units_Amp
			}
			ListQuantity {
				objectName: "soc"
				text: "State of charge"
				dataItem.uid: root.pack + "Soc"
				unit: VenusOS.Units_Percentage
			}
			ListQuantity {
				objectName: "cvl"
				text: "Its charge voltage limit (CVL)"
				dataItem.uid: root.pack + "Info/MaxChargeVoltage"
				unit: VenusOS.Units_Volt_DC
			}
			ListQuantity {
				objectName: "ccl"
				text: "Its charge current limit (CCL)"
				dataItem.uid: root.pack + "Info/MaxChargeCurrent"
				unit: VenusOS.Units_Amp
			}
			ListQuantity {
				objectName: "dcl"
				text: "Its discharge current limit (DCL)"
				dataItem.uid: root.pack + "Info/MaxDischargeCurrent"
				unit: VenusOS.Units_Amp
			}
			ListText {
				objectName: "blockingCharge"
				text: "Blocks charging"
				dataItem.uid: root.pack + "BlockingCharge"
				secondaryText: Format.yesNo(dataItem.value)
			}
			ListText {
				objectName: "blockingDischarge"
				text: "Blocks discharging"
				dataItem.uid: root.pack + "BlockingDischarge"
				secondaryText: Format.yesNo(dataItem.value)
			}
			ListText {
				objectName: "blockingReason"
				text: "Because"
				dataItem.uid: root.pack + "BlockingReason"
				preferredVisible: dataItem.valid && dataItem.value !== ""
				secondaryText: Format.text(dataItem.value)
			}
			ListText {
				objectName: "service"
				text: "D-Bus service"
				dataItem.uid: root.pack + "Service"
				secondaryText: Format.text(dataItem.value)
			}
			ListText {
				objectName: "id"
				text: "Id"
				dataItem.uid: root.pack + "Id"
				secondaryText: Format.text(dataItem.value)
			}
		}
	}
}
