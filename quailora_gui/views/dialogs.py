"""Dialogs: an engine failure, the GGUF type to export, and 'exported: here is where it went and
how to load it'."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QUrl
from PySide6.QtGui import QDesktopServices, QGuiApplication
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..controllers.wording import app_words
from .common import named, role_label


def show_failure(parent: QWidget, failed: Any, title: str = "Run failed") -> QMessageBox:
    """A non-blocking message box: one clear sentence, the hint, details on demand."""
    box = QMessageBox(parent)
    box.setObjectName("errorDialog")
    box.setIcon(QMessageBox.Icon.Critical)
    box.setWindowTitle(title)
    box.setText(app_words(failed.message))
    if getattr(failed, "hint", ""):
        box.setInformativeText(app_words(failed.hint))
    if getattr(failed, "details", ""):
        box.setDetailedText(failed.details)
    box.setStandardButtons(QMessageBox.StandardButton.Ok)
    box.open()
    return box


def show_input_error(parent: QWidget, exc: Any, title: str) -> QMessageBox:
    """Same dialog for an InputError raised by an action (open, export)."""
    box = QMessageBox(parent)
    box.setObjectName("errorDialog")
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle(title)
    box.setText(app_words(getattr(exc, "message", None) or str(exc)))
    hint = getattr(exc, "hint", "")
    if hint:
        box.setInformativeText(app_words(hint))
    box.open()
    return box


class GgufTypeDialog(QDialog):
    """Asks which GGUF type to write (`types`: the core's, with what each one is for)."""

    def __init__(self, parent: QWidget, gguf_file: str, types: list[tuple[str, str]]) -> None:
        super().__init__(parent)
        self.setObjectName("ggufTypeDialog")
        self.setWindowTitle("Export GGUF")
        self.ggufTypeCombo = named(QComboBox(), "ggufTypeCombo", "The tensor type of the GGUF file's weights.")
        for name, what in types:
            self.ggufTypeCombo.addItem(f"{name}: {what}", name)
        label = QLabel(f"Merge the adapter into its base, then write <code>{gguf_file}</code> as:")
        label.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(label)
        layout.addWidget(self.ggufTypeCombo)
        layout.addWidget(buttons)

    def gguf_type(self) -> str:
        return self.ggufTypeCombo.currentData()

    def choose(self, gguf_type: str) -> None:
        self.ggufTypeCombo.setCurrentIndex(self.ggufTypeCombo.findData(gguf_type))


class ExportDialog(QDialog):
    """Lists what was written where and shows the Python code that loads the adapter."""

    def __init__(
        self,
        parent: QWidget,
        written: list[tuple[str, str]],
        code: str,
        folder: str,
        caption: str = "Load it for fine-tuning with:",
        code_tooltip: str = "Python that loads the base model and this adapter.",
    ) -> None:
        super().__init__(parent)
        self.setObjectName("exportDialog")
        self.setWindowTitle("Export finished")
        self.resize(720, 520)
        self.folder = folder
        lines = "".join(
            f"<tr><td style='color:#64748b; padding-right:10px'>{what}</td><td><code>{path}</code></td></tr>"
            for what, path in written
        )
        self.whereLabel = QLabel(f"<b>Written</b><table>{lines}</table>")
        self.whereLabel.setObjectName("exportWhereLabel")
        self.whereLabel.setTextInteractionFlags(self.whereLabel.textInteractionFlags() | self._selectable())
        self.whereLabel.setWordWrap(True)
        self.loadingCodeView = named(QPlainTextEdit(), "loadingCodeView", code_tooltip)
        self.loadingCodeView.setReadOnly(True)
        self.loadingCodeView.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.loadingCodeView.setPlainText(code)
        self.loadingCodeView.setVisible(bool(code))
        self.copyCodeButton = named(
            QPushButton("Copy code"), "copyCodeButton", "Copy the code to the clipboard."
        )
        self.copyCodeButton.clicked.connect(self.copy_code)
        self.copyCodeButton.setVisible(bool(code))
        self.openFolderButton = named(
            QPushButton("Open folder"), "openFolderButton", "Show the folder in the file manager."
        )
        self.openFolderButton.clicked.connect(
            lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(self.folder))
        )
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        buttons.accepted.connect(self.accept)
        row = QHBoxLayout()
        row.addWidget(self.openFolderButton)
        row.addWidget(self.copyCodeButton)
        row.addStretch(1)
        row.addWidget(buttons)
        layout = QVBoxLayout(self)
        layout.addWidget(self.whereLabel)
        if code:
            layout.addWidget(role_label(caption, "hint"))
        layout.addWidget(self.loadingCodeView, 1)
        layout.addLayout(row)

    @staticmethod
    def _selectable() -> Any:
        from PySide6.QtCore import Qt

        return Qt.TextInteractionFlag.TextSelectableByMouse

    def copy_code(self) -> None:
        QGuiApplication.clipboard().setText(self.loadingCodeView.toPlainText())
        self.copyCodeButton.setText("Copied")
