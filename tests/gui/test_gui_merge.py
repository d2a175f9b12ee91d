"""File > Export merged model…: the shown run's adapter merged into its base (`quailora merge`)
off the GUI thread, each merged block in the log, then where it went and how to load it."""

from __future__ import annotations

import threading

import torch
from gui_helpers import finish_a_run
from PySide6.QtWidgets import QDialog, QFileDialog, QPlainTextEdit
from transformers import AutoModelForCausalLM

from quailora_core.serving import merge


def test_export_merged_model_merges_off_the_gui_thread_with_progress(qtbot, window, tiny_model_dir, text_file,
                                                                     tmp_path, monkeypatch):  # fmt: skip
    action = finish_a_run(qtbot, window, tiny_model_dir, text_file, tmp_path / "adapter", "exportMergedAction")

    dest = tmp_path / "merged"
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(dest))
    merged_in = []  # the real merge, called from whichever thread the window uses
    real = merge.merge_adapter
    monkeypatch.setattr(merge, "merge_adapter",
                        lambda *a, **k: merged_in.append(threading.current_thread()) or real(*a, **k))  # fmt: skip
    with qtbot.waitSignal(window.exported, timeout=120_000):
        action.trigger()
        assert not action.isEnabled() and not window.exportAdapterButton.isEnabled()  # one export at a time
    assert len(merged_in) == 1 and merged_in[0] is not threading.main_thread()
    log = window.logView.toPlainText()
    assert "Merging: block 1 of 2 merged" in log and "Merging: block 2 of 2 merged" in log, log
    assert action.isEnabled()
    assert AutoModelForCausalLM.from_pretrained(dest).dtype == torch.bfloat16
    dialog = window.findChild(QDialog, "exportDialog")
    assert dialog.isVisible() and str(dest) in dialog.whereLabel.text()
    code = dialog.findChild(QPlainTextEdit, "loadingCodeView").toPlainText()
    assert "AutoModelForCausalLM.from_pretrained" in code and str(dest) in code and "peft" not in code
