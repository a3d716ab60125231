// Stand-in for gui-v2's GradientListView (a ListView filling the page below the title).
import QtQuick

ListView {
	y: 48
	width: parent ? parent.width : 0
	height: parent ? parent.height - 48 : 0
	spacing: 4
	clip: true
	interactive: false
}
