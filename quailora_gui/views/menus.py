"""The window's menus: File, Run, View, Help. Each action has a stable objectName."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtGui import QAction, QKeySequence


def _action(window: Any, menu: Any, text: str, name: str, shortcut: Any, slot: Callable[[], Any]) -> QAction:
    action = QAction(text, window)
    action.setObjectName(name)
    if shortcut is not None:
        action.setShortcut(shortcut)
    action.triggered.connect(lambda _=False: slot())
    menu.addAction(action)
    return action


def build_menus(w: Any) -> None:
    """Add the menus to the window `w` and set its actions as attributes (openRunAction, ...)."""
    keys = QKeySequence.StandardKey
    file_menu = w.menuBar().addMenu("&File")
    w.openRunAction = _action(w, file_menu, "&Open run…", "openRunAction", keys.Open, lambda: w.open_run())
    w.saveRunAction = _action(w, file_menu, "&Save run…", "saveRunAction", keys.Save, lambda: w.save_run())
    file_menu.addSeparator()
    w.exportAdapterAction = _action(w, file_menu, "Export &adapter…", "exportAdapterAction", None,
                                    lambda: w.export_adapter())  # fmt: skip
    w.exportMergedAction = _action(w, file_menu, "Export &merged model…", "exportMergedAction", None,
                                   lambda: w.export_merged())  # fmt: skip
    w.exportGgufAction = _action(w, file_menu, "Export &GGUF…", "exportGgufAction", None, lambda: w.export_gguf())
    w.exportChartsAction = _action(w, file_menu, "Export &charts as PNG…", "exportChartsAction", None,
                                   lambda: w.export_charts())  # fmt: skip
    w.exportCsvAction = _action(w, file_menu, "Export results as C&SV…", "exportCsvAction", None,
                                lambda: w.export_csv())  # fmt: skip
    file_menu.addSeparator()
    _action(w, file_menu, "&Quit", "quitAction", keys.Quit, w.close)

    run_menu = w.menuBar().addMenu("&Run")
    w.runAction = _action(w, run_menu, "&Run", "runAction", QKeySequence("Ctrl+R"), w.start_run)
    w.cancelAction = _action(w, run_menu, "&Cancel", "cancelAction", QKeySequence("Esc"), w.cancel_run)
    run_menu.addSeparator()
    _action(w, run_menu, "Use the &demo model", "demoAction", None, w.use_demo)

    view_menu = w.menuBar().addMenu("&View")
    w.logScaleAction = QAction("&Log scale", w)
    w.logScaleAction.setObjectName("logScaleAction")
    w.logScaleAction.setCheckable(True)
    w.logScaleAction.setChecked(w.logScaleCheck.isChecked())  # in step from the start, not from the first toggle
    w.logScaleAction.toggled.connect(w.logScaleCheck.setChecked)
    w.logScaleCheck.toggled.connect(w.logScaleAction.setChecked)
    view_menu.addAction(w.logScaleAction)
    view_menu.addAction(w.progressDock.toggleViewAction())

    help_menu = w.menuBar().addMenu("&Help")
    _action(w, help_menu, "&About QuAILoRA Studio", "aboutAction", None, w.about)
