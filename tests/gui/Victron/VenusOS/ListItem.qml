// Stand-in for gui-v2's list item: primary text left, secondary text right, caption below.
import QtQuick

Rectangle {
	id: root

	property string text
	property string secondaryText
	property string caption
	property bool preferredVisible: true
	property bool interactive: false
	property string displayText: secondaryText

	signal clicked

	width: ListView.view ? ListView.view.width : 800
	height: visible ? (caption.length > 0 ? 72 : 52) : 0
	visible: preferredVisible
	color: "#272622"
	radius: 6

	Text {
		id: primary
		x: 24
		y: root.caption.length > 0 ? 10 : (root.height - height) / 2
		width: root.width * 0.45
		text: root.text
		color: "#ffffff"
		font.pixelSize: 18
		elide: Text.ElideRight
	}
	Text {
		anchors.right: parent.right
		anchors.rightMargin: root.interactive ? 48 : 24
		y: primary.y
		width: root.width * 0.5 - 24
		horizontalAlignment: Text.AlignRight
		text: root.displayText
		color: "#969591"
		font.pixelSize: 18
		elide: Text.ElideRight
	}
	Text {
		x: 24
		y: 40
		width: root.width - 48
		visible: root.caption.length > 0
		text: root.caption
		color: "#969591"
		font.pixelSize: 14
		elide: Text.ElideRight
	}
	Text {
		anchors.right: parent.right
		anchors.rightMargin: 20
		anchors.verticalCenter: parent.verticalCenter
		visible: root.interactive
		text: "›"
		color: "#969591"
		font.pixelSize: 28
	}
}
