// Stand-in for gui-v2's VenusOS enums: the units the pages use, formatted like the GX shows them.
pragma Singleton
import QtQuick

QtObject {
	enum Unit {
		Units_None,
		Units_Volt_DC,
		Units_Amp,
		Units_Percentage
	}

	function format(value, unit) {
		if (unit === VenusOS.Units_Volt_DC) {
			return value.toFixed(2) + " V"
		}
		if (unit === VenusOS.Units_Amp) {
			return value.toFixed(1) + " A"
		}
		if (unit === VenusOS.Units_Percentage) {
			return value.toFixed(0) + " %"
		}
		return String(value)
	}
}
