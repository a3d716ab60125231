// Stand-in for gui-v2's ListText: secondary text defaults to the value of dataItem.
ListItem {
	readonly property alias dataItem: item

	secondaryText: item.valid ? item.value : ""

	VeQuickItem {
		id: item
	}
}
