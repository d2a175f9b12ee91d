"""What both screenshot scripts share: open the real window on the demo model with private
settings and outputs, wait on its signals, set up a small initialization, grab PNGs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZE = (1600, 1000)


def open_demo_window():
    """(app, window): the real window on the demo model, settings/outputs in a temp folder."""
    tmp = Path(tempfile.mkdtemp(prefix="quailora-screenshots-"))
    os.environ["QUAILORA_GUI_SETTINGS"] = str(tmp / "settings.ini")
    os.environ["QUAILORA_GUI_OUTPUT_ROOT"] = str(tmp / "outputs")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    from quailora_core.demo import ensure_demo_model

    print("demo model:", ensure_demo_model())

    from PySide6.QtWidgets import QApplication

    from quailora_gui.app import build_window

    window = build_window(["--demo"])
    window.resize(*SIZE)
    window.show()
    return QApplication.instance(), window


def wait_for(window, signal, timeout_ms: int = 600_000) -> list:
    """Run the event loop until `signal` fires; its arguments (exit on time-out)."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    got: list = []

    def done(*args):
        got.extend(args)
        loop.quit()

    signal.connect(done)
    QTimer.singleShot(timeout_ms, loop.quit)
    loop.exec()
    signal.disconnect(done)
    if not got and signal is not window.engineReady:
        raise SystemExit(f"timed out waiting for {signal}")
    return got


def small_init_form(window) -> None:
    """32 x 128 calibration tokens (+8 held out), rank 16, once the engine has loaded."""
    if not window.engine_ready:
        wait_for(window, window.engineReady)
    form = window.form
    form.samplesSpin.setValue(32)
    form.seqLenSpin.setValue(128)
    form.heldoutSpin.setValue(8)
    form.rankSpin.setValue(16)
    form.alphaSpin.setValue(16.0)


def set_method(window, method: str) -> None:
    """Choose a method and wait until the form's checks pass."""
    window.form.methodCombo.setCurrentIndex(window.form.methodCombo.findData(method))
    window.request_check()
    report = wait_for(window, window.checksFinished)[0]
    if not report.ok:
        raise SystemExit(f"the form has problems: {report.errors}")


def grab(app, window, name: str) -> None:
    app.processEvents()
    path = HERE / name
    window.grab().save(str(path), "PNG")
    print("wrote", path)
