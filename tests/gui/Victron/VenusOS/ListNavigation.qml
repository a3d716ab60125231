// Stand-in for gui-v2's ListNavigation: a row that opens another page when tapped.
ListItem {
	interactive: true
}
