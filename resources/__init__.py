"""The project's shipped files, installed as the data package `quailora_resources`.

One folder beside `quailora_core` and `quailora_gui` (the design card's `resources/`):
`demo-model/` (the shipped demo model), `sample-text/` (the built-in calibration text),
`icons/`, `style/` (the Qt style sheet) and `quailora-gui.desktop`. An editable install maps
this very folder; a wheel installs a copy. Code asks `path(...)` instead of building paths
from `__file__`, so the core and the app find the same files either way.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent

DEMO_MODEL = "demo-model"
SAMPLE_TEXT = "sample-text/calibration.txt"
ICON = "icons/icon.svg"
STYLE_SHEET = "style/style.qss"
DESKTOP_ENTRY = "quailora-gui.desktop"


def path(*parts: str) -> Path:
    """A shipped file or folder, e.g. `path(ICON)`; not checked for existence."""
    return ROOT.joinpath(*parts)
