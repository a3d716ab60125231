// Stand-in for gui-v2's ListQuantity: a number from dataItem shown with its unit.
ListItem {
	id: root

	readonly property alias dataItem: item
	property real value: item.valid ? item.value : NaN
	property int unit: VenusOS.Units_None

	displayText: isNaN(root.value) ? "--" : VenusOS.format(root.value, root.unit)

	VeQuickItem {
		id: item
	}
}
