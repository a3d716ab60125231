// Stand-in for gui-v2's VisibleItemModel; items hide themselves when not preferredVisible.
import QtQml.Models

ObjectModel {}
