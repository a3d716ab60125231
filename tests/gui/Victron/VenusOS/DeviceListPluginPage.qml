// Stand-in for gui-v2's DeviceListPluginPage: a Page that gets the device whose page it extends.
Page {
	required property Device device
}
