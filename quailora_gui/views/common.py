"""Settings store, style sheet, icon and small widget helpers shared by the views."""

from __future__ import annotations

import os

import quailora_resources
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QLabel, QSizePolicy, QWidget

from ..controllers.labels import tooltip as registered_tooltip

ORGANIZATION = "QuAILoRA"
APPLICATION = "QuAILoRA Studio"
# Path of an .ini file to use instead of the user's settings (tests, portable installs).
SETTINGS_ENV = "QUAILORA_GUI_SETTINGS"


def open_settings() -> QSettings:
    """The application's QSettings: $QUAILORA_GUI_SETTINGS if set, else the user's ini file."""
    path = os.environ.get(SETTINGS_ENV)
    if path:
        return QSettings(path, QSettings.Format.IniFormat)
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APPLICATION)


def resource_path(name: str) -> str:
    """A shipped file of the top-level `resources/` (the `quailora_resources` package)."""
    return str(quailora_resources.path(name))


def app_icon() -> QIcon:
    return QIcon(resource_path(quailora_resources.ICON))


def style_sheet() -> str:
    """The QSS, with @RES@ replaced by the resources folder (for the arrow images)."""
    with open(resource_path(quailora_resources.STYLE_SHEET), encoding="utf-8") as f:
        text = f.read()
    return text.replace("@RES@", resource_path("").rstrip("/\\").replace("\\", "/"))


def named(widget: QWidget, name: str, tooltip: str | None = None) -> QWidget:
    """Give a widget its stable objectName and its tooltip: the help of the setting it shows
    (from the core), or the one registered for that name (`controllers.labels.TOOLTIPS`)."""
    widget.setObjectName(name)
    text = tooltip if tooltip is not None else registered_tooltip(name)
    if text:
        widget.setToolTip(text)
    return widget


def role_label(text: str = "", role: str = "", name: str = "") -> QLabel:
    """A QLabel styled by its `role` property (error, hint, badge, summary)."""
    label = QLabel(text)
    if role:
        label.setProperty("role", role)
    if name:
        label.setObjectName(name)
    label.setWordWrap(True)
    return label


def error_label(name: str) -> QLabel:
    """The red label that says why a field blocks Run; hidden while there is nothing to say."""
    label = role_label("", "error", name)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.hide()
    return label


def set_error(label: QLabel, text: str) -> None:
    label.setText(text)
    label.setToolTip(text)
    label.setVisible(bool(text))


def restyle(widget: QWidget) -> None:
    """Re-apply the style sheet after a dynamic property changed."""
    style = widget.style()
    style.unpolish(widget)
    style.polish(widget)


def shrinkable(label: QLabel) -> QLabel:
    """A one-line label whose long text is clipped instead of widening the window."""
    label.setSizePolicy(QSizePolicy.Policy.Ignored, label.sizePolicy().verticalPolicy())
    label.setMinimumWidth(40)
    return label
