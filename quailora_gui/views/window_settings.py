"""What the window remembers between sessions (QSettings): recent models and calibration
sources, the last folder, the last run's settings, the window's geometry (its docks: the form's width, the log's height) and chart scale."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QByteArray

from ..controllers.paths import RecentList
from .common import open_settings


class WindowSettings:
    def __init__(self) -> None:
        self.store = open_settings()
        self.recent_models = RecentList(self._list("recent/models"))
        self.recent_calibration = RecentList(self._list("recent/calibration"))

    def _list(self, key: str) -> list[str]:
        value = self.store.value(key, [])
        if isinstance(value, str):
            return [value] if value else []
        return [str(v) for v in (value or [])]

    # ------------------------------------------------------------------ recents
    def remember_model(self, path: str) -> bool:
        """Put a model first in the recent list (not the demo); whether the list changed."""
        from quailora_core.config import DEMO_MODEL

        if not path or path == DEMO_MODEL:
            return False
        self.recent_models.add(path)
        self.store.setValue("recent/models", self.recent_models.items)
        return True

    def remember_calibration(self, source: str) -> bool:
        from quailora_core.config import DEMO_CALIBRATION

        if not source or source == DEMO_CALIBRATION:
            return False
        self.recent_calibration.add(source)
        self.store.setValue("recent/calibration", self.recent_calibration.items)
        return True

    # ------------------------------------------------------------------ folders, runs
    def last_dir(self) -> str:
        from pathlib import Path

        return str(self.store.value("paths/last_dir", str(Path.home())))

    def remember_dir(self, path: str) -> None:
        self.store.setValue("paths/last_dir", path)

    def save_last_config(self, config: Any) -> None:
        self.store.setValue("form/last_run", config.to_toml())

    def last_config(self) -> Any | None:
        text = self.store.value("form/last_run", "")
        if not text:
            return None
        from quailora_core.config import RunConfig

        try:
            return RunConfig.from_toml(str(text))
        except Exception:  # settings from another version: start from the defaults
            return None

    # ------------------------------------------------------------------ the window
    def restore_window(self, window: Any) -> None:
        """Geometry, dock state, splitter and the log-scale choice of `window`."""
        for key, restore in (
            ("window/geometry", window.restoreGeometry),
            ("window/state", window.restoreState),
        ):
            value = self.store.value(key)
            if isinstance(value, QByteArray) and not value.isEmpty():
                restore(value)
        on = str(self.store.value("charts/log_scale", "true")).lower() == "true"
        window.logScaleCheck.setChecked(on)

    def save_window(self, window: Any, config: Any) -> None:
        s = self.store
        s.setValue("window/geometry", window.saveGeometry())
        s.setValue("window/state", window.saveState())
        s.setValue("charts/log_scale", window.logScaleCheck.isChecked())
        self.save_last_config(config)
        s.setValue("recent/models", self.recent_models.items)
        s.setValue("recent/calibration", self.recent_calibration.items)
        s.sync()
