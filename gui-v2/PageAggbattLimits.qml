// The bank's limits and what sets each, and the decisions behind them: charge mode, balancing,
// feed-in guard, current source and SoC strategy.
import QtQuick
import Victron.VenusOS
import "Format.js" as Format

DeviceListPluginPage {
	id: root

	readonly property string bank: root.device.serviceUid

	GradientListView {
		model: VisibleItemModel {
			ListQuantity {
				objectName: "cvl"
				text: "Charge voltage limit (CVL)"
				dataItem.uid: root.bank + "/Info/MaxChargeVoltage"
				unit: VenusOS.Units_Volt_DC
			}
			ListQuantity {
				objectName: "ccl"
				text: "Charge current limit (CCL)"
				dataItem.uid: root.bank + "/Info/MaxChargeCurrent"
				unit: VenusOS.Units_Amp
			}
			ListText {
				objectName: "chargeLimitation"
				text: "CCL set by"
				dataItem.uid: root.bank + "/Info/ChargeLimitation"
				secondaryText: Format.text(dataItem.value)
			}
			ListQuantity {
				objectName: "dcl"
				text: "Discharge current limit (DCL)"
				dataItem.uid: root.bank + "/Info/MaxDischargeCurrent"
				unit: VenusOS.Units_Amp
			}
			ListText {
				objectName: "dischargeLimitation"
				text: "DCL set by"
				dataItem.uid: root.bank + "/Info/DischargeLimitation"
				secondaryText: Format.text(dataItem.value)
			}
			ListText {
				objectName: "chargeMode"
				text: "Charge mode (CVL rule)"
				dataItem.uid: root.bank + "/Info/ChargeMode"
				secondaryText: Format.text(dataItem.value)
			}
			ListText {
				objectName: "balancingPhase"
				text: "Balancing"
				dataItem.uid: root.bank + "/Aggbatt/Balancing/Phase"
				preferredVisible: dataItem.valid
				secondaryText: Format.text(dataItem.value)
				caption: "last " + Format.text(lastBalancing.value) + ", next due " + Format.text(nextBalancing.value)

				VeQuickItem { id: lastBalancing; uid: root.bank + "/Aggbatt/Balancing/Last" }
				VeQuickItem { id: nextBalancing; uid: root.bank + "/Aggbatt/Balancing/NextDue" }
			}
			ListText {
				objectName: "feedInGuard"
				text: "DC feed-in guard"
				dataItem.uid: root.bank + "/Aggbatt/FeedInGuard"
				preferredVisible: dataItem.valid
				secondaryText: Format.text(dataItem.value)
			}
			ListText {
				objectName: "currentSource"
				text: "Current source"
				dataItem.uid: root.bank + "/Aggbatt/CurrentSource"
				secondaryText: Format.text(dataItem.value)
			}
			ListText {
				objectName: "socStrategy"
				text: "SoC strategy"
				dataItem.uid: root.bank + "/Aggbatt/SocStrategy"
				secondaryText: Format.text(dataItem.value)
			}
			ListText {
				objectName: "chargeStrategy"
				text: "Charge strategy"
				dataItem.uid: root.bank + "/Aggbatt/ChargeStrategy"
				secondaryText: Format.text(dataItem.value)
			}
		}
	}
}
