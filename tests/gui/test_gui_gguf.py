"""File > Export GGUF…: the shown run's adapter merged into its base, then written as one GGUF file
for llama.cpp (`quailora merge --gguf`), off the GUI thread in the files lane, each step in the log;
then the file and the llama.cpp commands that run it. A file the engine refuses is its one line
in an error dialog, and nothing is written."""

from __future__ import annotations

import threading

import gguf
from gui_helpers import finish_a_run
from PySide6.QtWidgets import QDialog, QFileDialog, QMessageBox, QPlainTextEdit

from quailora_core.serving import merge_gguf
from quailora_core.serving.gguf_export import TYPES


def test_export_gguf_merges_and_writes_the_file_off_the_gui_thread(qtbot, window, tiny_model_dir, text_file,
                                                                   tmp_path, monkeypatch):  # fmt: skip
    action = finish_a_run(qtbot, window, tiny_model_dir, text_file, tmp_path / "adapter", "exportGgufAction")

    # a file that exists: the engine's one-line refusal, before any merge, and nothing written
    out = tmp_path / "gguf"
    out.mkdir()
    existing = out / "taken.gguf"
    existing.write_bytes(b"keep")
    with qtbot.waitSignal(window.exportFailed, timeout=60_000) as failure:
        window.export_gguf(str(existing), "f16")
    box = window.findChild(QMessageBox, "errorDialog")
    assert box.isVisible() and box.text() == failure.args[0].message and "already exists" in box.text()
    assert "Merging: block" not in window.logView.toPlainText()  # refused before the merge began
    assert sorted(p.name for p in out.iterdir()) == ["taken.gguf"] and existing.read_bytes() == b"keep"
    assert action.isEnabled()
    box.close()

    # the action: the file name from the file dialog (.gguf added), the type from ggufTypeCombo
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(out / "tiny"), "GGUF (*.gguf)"))
    ran_in = []  # the real merge and export, called from whichever thread the window uses
    real = merge_gguf.merge_to_gguf
    monkeypatch.setattr(merge_gguf, "merge_to_gguf",
                        lambda *a, **k: ran_in.append(threading.current_thread()) or real(*a, **k))  # fmt: skip
    action.trigger()
    dialog = window.findChild(QDialog, "ggufTypeDialog")
    combo = dialog.ggufTypeCombo
    assert dialog.isVisible() and [combo.itemData(i) for i in range(combo.count())] == list(TYPES)
    dialog.choose("q8_0")
    with qtbot.waitSignal(window.exported, timeout=120_000):
        dialog.accept()
        assert not action.isEnabled() and not window.exportMergedAction.isEnabled()  # one export at a time
    assert len(ran_in) == 1 and ran_in[0] is not threading.main_thread()
    assert action.isEnabled()
    log = window.logView.toPlainText()
    assert "Merging: block 2 of 2 merged" in log and "GGUF: reading the file back" in log, log
    gguf_file = out / "tiny.gguf"
    assert sorted(p.name for p in out.iterdir()) == ["taken.gguf", "tiny-merged", "tiny.gguf"]
    reader = gguf.GGUFReader(gguf_file)
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    assert str(gguf_file) in window.statusBar().currentMessage()
    done = window.findChild(QDialog, "exportDialog")
    assert done.isVisible() and str(gguf_file) in done.whereLabel.text()
    commands = done.findChild(QPlainTextEdit, "loadingCodeView").toPlainText()
    assert commands == f"llama-cli -m {gguf_file}\nllama-server -m {gguf_file}\n"
