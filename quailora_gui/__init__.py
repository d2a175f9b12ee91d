"""QuAILoRA Studio desktop application (PySide6 + pyqtgraph).

Layout (napari / OneTrainer style):

* `quailora_gui.controllers`: plain Python, no Qt import. Form checks, progress and ETA,
  per-layer result bookkeeping for the charts, the session of finished runs, number
  formatting. Testable without a display.
* `quailora_gui.views`: thin Qt widgets that show controller state and forward user input.
* `quailora_gui.app`: the `quailora-gui` entry point.

The GUI never computes: every number it shows comes from `quailora_core`.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
