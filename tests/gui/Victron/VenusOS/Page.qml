// Stand-in for gui-v2's Page: a screen-sized page; gui-v2 shows the title in its status bar,
// drawn here as a header so a screenshot says which page it is.
import QtQuick

FocusScope {
	id: root

	property string title

	implicitWidth: 800
	implicitHeight: 480

	Rectangle {
		anchors.fill: parent
		color: "#000000"
		z: -1
	}
	Text {
		x: 24
		height: 48
		verticalAlignment: Text.AlignVCenter
		text: root.title
		color: "#ffffff"
		font.pixelSize: 22
		z: 1
	}
}
