"""Drive QuAILoRA Studio with the demo model and save the README screenshots.

    xvfb-run -s "-screen 0 1600x1000x24" python docs/screenshots/make_screenshots.py

(or with QT_QPA_PLATFORM=offscreen; `make_training_screenshot.py` beside it makes
training-panel-running.png). It runs LoftQ, then QuAILoRA on the demo model (built
locally, no download), grabs the window half-way through the second run
(main-window-running.png), then once it has finished with the LoftQ run overlaid
(main-window-finished.png), and the heat map tab (main-window-heatmap.png). Settings and
outputs go to a temporary folder, never to the user's.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZE = (1600, 1000)


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="quailora-screenshots-"))
    os.environ["QUAILORA_GUI_SETTINGS"] = str(tmp / "settings.ini")
    os.environ["QUAILORA_GUI_OUTPUT_ROOT"] = str(tmp / "outputs")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    from quailora_core.demo import ensure_demo_model

    print("demo model:", ensure_demo_model(on_log=print))

    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from quailora_gui.app import build_window

    window = build_window(["--demo"])
    window.resize(*SIZE)
    window.show()
    app = QApplication.instance()
    form = window.form

    def wait_for(signal, timeout_ms: int = 600_000) -> list:
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

    def settle() -> None:
        window.request_check()
        report = wait_for(window.checksFinished)[0]
        if not report.ok:
            raise SystemExit(f"the form has problems: {report.errors}")

    def grab(name: str) -> None:
        app.processEvents()
        path = HERE / name
        window.grab().save(str(path), "PNG")
        print("wrote", path)

    if not window.engine_ready:
        wait_for(window.engineReady)
    form.samplesSpin.setValue(32)
    form.seqLenSpin.setValue(128)
    form.heldoutSpin.setValue(8)
    form.rankSpin.setValue(16)
    form.alphaSpin.setValue(16.0)

    # run 1: LoftQ, the uncalibrated baseline
    form.methodCombo.setCurrentIndex(form.methodCombo.findData("loftq"))
    settle()
    window.runButton.click()
    wait_for(window.runEnded)

    # run 2: QuAILoRA, grabbed half-way
    form.methodCombo.setCurrentIndex(form.methodCombo.findData("quailora"))
    settle()
    state = {"grabbed": False}

    def on_layer(event) -> None:
        if not state["grabbed"] and window.tracker.total and window.tracker.done >= window.tracker.total // 2:
            state["grabbed"] = True
            window._refresh_charts(everything=True)
            window._update_progress()
            grab("main-window-running.png")

    window.layerReceived.connect(on_layer)
    window.runButton.click()
    outcome = wait_for(window.runEnded)[0]
    if outcome != "finished":
        raise SystemExit(f"the run ended with {outcome}: {window.logView.toPlainText()}")

    window.compareCombo.setCurrentIndex(1)  # overlay the LoftQ run
    if window.report is None:
        wait_for(window.checksFinished)  # the form moved on to a fresh output folder
    grab("main-window-finished.png")
    window.tabs.setCurrentWidget(window.heatMap)
    grab("main-window-heatmap.png")
    window.tabs.setCurrentWidget(window.comparePanel)
    grab("main-window-compare.png")
    window.shutdown()
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
