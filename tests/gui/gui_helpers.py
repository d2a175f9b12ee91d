"""Helpers shared by the GUI tests (imported as `gui_helpers`; pytest puts this folder on sys.path)."""

from __future__ import annotations


def settle(qtbot, window, timeout: int = 60_000):
    """Check the form now and wait for the report (the form's checks run off the GUI thread)."""
    with qtbot.waitSignal(window.checksFinished, timeout=timeout) as blocker:
        window.request_check()
    return blocker.args[0]


def configure(
    window, model, calibration, output, rank=4, bits=4, method="quailora", samples=6, seq_len=48, heldout=2
):
    """Fill the form as a user would, with settings small enough for a CPU test."""
    f = window.form
    f.modelPathEdit.setText(str(model))
    f.calibrationPathEdit.setText(str(calibration))
    f.outputPathEdit.setText(str(output))
    f.rankSpin.setValue(rank)
    f.alphaSpin.setValue(float(2 * rank))
    f.bitsCombo.setCurrentIndex(f.bitsCombo.findData(bits))
    f.methodCombo.setCurrentIndex(f.methodCombo.findData(method))
    f.samplesSpin.setValue(samples)
    f.seqLenSpin.setValue(seq_len)
    f.heldoutSpin.setValue(heldout)
    f.batchSizeSpin.setValue(4)
    f.deviceCombo.setCurrentIndex(f.deviceCombo.findData("cpu"))
    f.dtypeCombo.setCurrentIndex(f.dtypeCombo.findData("float32"))


def finish_a_run(qtbot, window, model, calibration, output, action_name: str):
    """Run a small initialization in the real window, checking that the QAction named
    `action_name` (an export that needs a finished adapter) is disabled before and enabled
    after; returns that action."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QAction

    action = window.findChild(QAction, action_name)
    assert not action.isEnabled()  # no finished adapter shown yet
    configure(window, model, calibration, output, rank=4, bits=4)
    assert settle(qtbot, window).ok
    with qtbot.waitSignal(window.runEnded, timeout=180_000) as blocker:
        qtbot.mouseClick(window.runButton, Qt.MouseButton.LeftButton)
    assert blocker.args == ["finished"], window.logView.toPlainText()
    assert action.isEnabled()
    return action
