"""Compare tab and the progress + log panel."""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..controllers.session import compare_rows
from .common import named, role_label, shrinkable


class ComparePanel(QWidget):
    """The summary figures of the shown run and the compared run, side by side."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.intro = role_label(
            "Finish two runs, then pick one under “Compare with”: its per-layer values appear as orange "
            "diamonds on the Layer errors chart and its summary here.",
            "hint",
            "compareIntro",
        )
        self.table = named(QTableWidget(0, 3), "compareTable", "Summary figures of the two runs.")
        self.table.setHorizontalHeaderLabels(["Figure", "This run", "Compared run"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addWidget(self.intro)
        layout.addWidget(self.table, 1)

    def show_runs(
        self, name_a: str, summary_a: dict[str, Any] | None, name_b: str, summary_b: dict[str, Any] | None
    ) -> None:
        self.table.setHorizontalHeaderLabels(["Figure", name_a or "This run", name_b or "Compared run"])
        rows = compare_rows(summary_a or {}, summary_b) if (summary_a or summary_b) else []
        self.table.setRowCount(len(rows))
        for i, cells in enumerate(rows):
            for j, text in enumerate(cells):
                self.table.setItem(i, j, QTableWidgetItem(text))

    def cell(self, row: int, column: int) -> str:
        item = self.table.item(row, column)
        return item.text() if item is not None else ""


class ProgressPanel(QWidget):
    """Progress bar with the current layer and ETA, the Cancel button, and the log."""

    LEVEL_PREFIX = {"info": "", "warning": "warning: ", "error": "error: "}

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.progressBar = named(QProgressBar(), "progressBar")
        self.progressBar.setRange(0, 1)
        self.progressBar.setValue(0)
        self.progressBar.setFormat("")
        self.progressBar.setTextVisible(True)
        self.currentLayerLabel = named(
            role_label("Ready.", "", "currentLayerLabel"),
            "currentLayerLabel",
            "The stage or layer the engine is working on.",
        )
        self.currentLayerLabel.setWordWrap(False)
        shrinkable(self.currentLayerLabel)
        self.etaLabel = named(role_label("", "hint", "etaLabel"), "etaLabel", "Time elapsed and time left.")
        self.etaLabel.setWordWrap(False)
        shrinkable(self.etaLabel)
        self.cancelButton = named(QPushButton("Cancel"), "cancelButton")
        self.cancelButton.setEnabled(False)
        self.logView = named(QPlainTextEdit(), "logView")
        self.logView.setReadOnly(True)
        self.logView.setMaximumBlockCount(5000)
        self.logView.setPlaceholderText("Messages from the engine appear here.")

        top = QHBoxLayout()
        top.addWidget(self.progressBar, 3)
        top.addWidget(self.currentLayerLabel, 4)
        top.addWidget(self.etaLabel, 2)
        top.addWidget(self.cancelButton)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.setSpacing(4)
        layout.addLayout(top)
        layout.addWidget(self.logView, 1)

    def log(self, message: str, level: str = "info") -> None:
        stamp = time.strftime("%H:%M:%S")
        self.logView.appendPlainText(f"{stamp}  {self.LEVEL_PREFIX.get(level, level + ': ')}{message}")
        self.logView.moveCursor(QTextCursor.MoveOperation.End)

    def set_busy(self, text: str) -> None:
        self.progressBar.setRange(0, 0)
        self.progressBar.setFormat("")
        self.currentLayerLabel.setText(text)

    def set_progress(self, done: int, total: int, text: str, eta: str, unit: str = "layers") -> None:
        self.progressBar.setRange(0, max(1, total))
        self.progressBar.setValue(done)
        self.progressBar.setFormat(f"%v / %m {unit}")
        self.currentLayerLabel.setText(text)
        self.etaLabel.setText(eta)

    def set_idle(
        self, text: str, done: int | None = None, total: int | None = None, unit: str = "layers"
    ) -> None:
        if total:
            self.progressBar.setRange(0, total)
            self.progressBar.setValue(done or 0)
            self.progressBar.setFormat(f"%v / %m {unit}")
        elif self.progressBar.maximum() == 0:
            self.progressBar.setRange(0, 1)
            self.progressBar.setValue(0)
            self.progressBar.setFormat("")
        self.currentLayerLabel.setText(text)
