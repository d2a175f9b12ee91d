"""Drive QuAILoRA Studio's Training tab with the demo model and save its README screenshot.

    xvfb-run -s "-screen 0 1600x1000x24" python docs/screenshots/make_training_screenshot.py

(or with QT_QPA_PLATFORM=offscreen). It initializes the demo model's adapter (QuAILoRA,
rank 16), launches a short fine-tuning on the built-in demo text from the Training tab (the
child process trains on one CPU thread), grabs the window mid-run
(training-panel-running.png), then stops the training. Settings and outputs go to a
temporary folder, never to the user's.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZE = (1600, 1000)
MAX_STEPS = 120
GRAB_AT = 75  # the step after which the window is grabbed


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

    if not window.engine_ready:
        wait_for(window.engineReady)
    form.samplesSpin.setValue(32)
    form.seqLenSpin.setValue(128)
    form.heldoutSpin.setValue(8)
    form.rankSpin.setValue(16)
    form.alphaSpin.setValue(16.0)
    form.methodCombo.setCurrentIndex(form.methodCombo.findData("quailora"))
    window.request_check()
    report = wait_for(window.checksFinished)[0]
    if not report.ok:
        raise SystemExit(f"the form has problems: {report.errors}")
    window.runButton.click()
    if wait_for(window.runEnded)[0] != "finished":
        raise SystemExit(window.logView.toPlainText())

    p = window.trainingPanel
    window.tabs.setCurrentWidget(p)
    p.trainDataEdit.setText("demo")
    p.maxStepsSpin.setValue(MAX_STEPS)
    p.learningRateSpin.setValue(5e-4)
    p.trainBatchSizeSpin.setValue(4)
    p.trainSeqLenSpin.setValue(128)
    p.evalIntervalSpin.setValue(15)
    p.saveIntervalSpin.setValue(60)
    window.training_env["OMP_NUM_THREADS"] = "1"
    window.launchTrainingButton.click()
    while True:
        event = wait_for(window.trainingStep)[0]
        if event.step >= GRAB_AT:
            break
    window._update_training_progress()
    app.processEvents()
    path = HERE / "training-panel-running.png"
    window.grab().save(str(path), "PNG")
    print("wrote", path)
    window.stop_training()
    wait_for(window.trainingStopped, 120_000)
    window.shutdown()
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
