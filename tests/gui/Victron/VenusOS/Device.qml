// Stand-in for gui-v2's Device: the properties a plugin page reads.
import QtQuick

QtObject {
	property string serviceUid
	property int productId
	property int deviceInstance
	property string name
}
