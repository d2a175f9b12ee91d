"""The form warns, before the run, of settings a serving stack will not reproduce; the
results view shows the finished adapter's serving verdicts."""

from __future__ import annotations

from gui_helpers import configure, settle
from PySide6.QtWidgets import QLabel


def test_fp4_warns_of_vllm_before_the_run_and_a_servable_setting_clears_it(qtbot, window, tiny_model_dir,
                                                                          text_file, tmp_path):  # fmt: skip
    form = window.form
    configure(window, tiny_model_dir, text_file, tmp_path / "out", rank=12)
    form.quantTypeCombo.setCurrentIndex(form.quantTypeCombo.findData("fp4"))
    report = settle(qtbot, window)
    assert report.ok, report.errors  # a warning, not a refusal: the user may serve with transformers only
    label = window.findChild(QLabel, "servingWarningLabel")
    assert label.isVisibleTo(window)
    assert "vLLM quantizes the base in flight as 4-bit NF4 with double quantization only" in label.text()
    assert "computed for 4-bit FP4 with double quantization" in label.text()
    assert window.runButton.isEnabled()

    form.quantTypeCombo.setCurrentIndex(form.quantTypeCombo.findData("nf4"))
    form.doubleQuantCheck.setChecked(True)
    assert settle(qtbot, window).ok  # NF4 + double quant, rank 12: vLLM serves it (--max-lora-rank 16)
    assert label.text() == "" and not label.isVisibleTo(window)


def test_the_results_view_shows_the_finished_adapters_serving_verdicts(qtbot, window, tiny_model_dir, text_file,
                                                                       tmp_path):  # fmt: skip
    from PySide6.QtCore import Qt

    form = window.form
    configure(window, tiny_model_dir, text_file, tmp_path / "adapter", rank=4)
    form.quantTypeCombo.setCurrentIndex(form.quantTypeCombo.findData("fp4"))
    if not window.engine_ready:
        with qtbot.waitSignal(window.engineReady, timeout=120_000):
            pass
    assert settle(qtbot, window).ok
    with qtbot.waitSignal(window.runEnded, timeout=300_000) as blocker:
        qtbot.mouseClick(window.runButton, Qt.MouseButton.LeftButton)
    assert blocker.args[0] == "finished", window.logView.toPlainText()
    label = window.findChild(QLabel, "servingLabel")
    assert label.isVisibleTo(window)
    assert "vLLM (bitsandbytes in flight): will not reproduce it" in label.text()
    text = label.toolTip()  # the full verdicts
    assert "transformers + bitsandbytes reproduces this adapter." in text
    assert "vLLM (bitsandbytes in flight) will not reproduce this adapter" in text and "FP4" in text
    assert "llama.cpp (GGUF) will not reproduce this adapter" in text
