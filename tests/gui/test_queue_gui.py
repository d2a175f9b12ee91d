"""The Queue tab: runs added from the form or a terminal appear, run one after another in the
child process (`quailora queue run`), and the buttons reorder, cancel, remove and pause."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gui_helpers import configure
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QCheckBox, QDialog, QPushButton

from quailora_core.jobs import JobQueue, default_queue_path, init_job

RUN_TIMEOUT = 240_000


def click(qtbot, window, name):
    button = window.findChild(QPushButton, name)
    assert button is not None and button.isEnabled(), name
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def states(window) -> list[str]:
    panel = window.queuePanel
    return [panel.cell(i, "State") for i in range(panel.queueTable.rowCount())]


def outputs(window) -> list[str]:
    panel = window.queuePanel
    return [panel.cell(i, "Output") for i in range(panel.queueTable.rowCount())]


def select(window, row):
    window.queuePanel.queueTable.selectRow(row)


def test_runs_added_from_the_form_and_a_terminal_run_in_the_child(qtbot, window, tiny_model_dir, text_file, tmp_path):
    configure(window, tiny_model_dir, text_file, tmp_path / "a", rank=4)
    click(qtbot, window, "addToQueueButton")
    assert outputs(window) == [str(tmp_path / "a")] and states(window) == ["queued"]
    assert window.form.outputPathEdit.text() == str(tmp_path / "a-2")  # the next run needs its own folder
    # a terminal appends to the same queue file while the window is open
    other = window.form.to_config()
    other.output = str(tmp_path / "b")
    JobQueue(default_queue_path()).add([init_job(other, "from a terminal")])
    qtbot.waitUntil(lambda: window.queuePanel.queueTable.rowCount() == 2, timeout=10_000)
    assert window.queuePanel.cell(1, "Label") == "from a terminal"

    window.queue_control.env["OMP_NUM_THREADS"] = "1"
    with qtbot.waitSignal(window.queue_control.runnerEnded, timeout=RUN_TIMEOUT) as ended:
        click(qtbot, window, "queueStartButton")
        assert not window.findChild(QPushButton, "queueStartButton").isEnabled()  # one runner at a time
    assert ended.args == [0], window.logView.toPlainText()
    assert states(window) == ["done", "done"], window.logView.toPlainText()
    assert (tmp_path / "a" / "adapter_config.json").is_file() and (tmp_path / "b" / "adapter_config.json").is_file()
    log = window.logView.toPlainText()
    assert "Queue: from a terminal: done" in log
    # the queue's finished runs are in the History (outside the output root too)
    qtbot.waitUntil(lambda: {str(Path(e.path).resolve()) for e in window.history.history.entries}
                    >= {str((tmp_path / n).resolve()) for n in ("a", "b")}, timeout=60_000)  # fmt: skip
    # the queue survives the window: a new one reads the same jobs
    assert [j.state for j in JobQueue(default_queue_path()).jobs()] == ["done", "done"]


def test_buttons_reorder_cancel_remove_pause_and_add_a_sweep(qtbot, window, tiny_model_dir, text_file, tmp_path):
    configure(window, tiny_model_dir, text_file, tmp_path / "x", rank=4)
    base = window.form.to_config()
    queue = JobQueue(default_queue_path())
    for name in ("a", "b", "c"):
        base.output = str(tmp_path / name)
        queue.add([init_job(base)])
    qtbot.waitUntil(lambda: window.queuePanel.queueTable.rowCount() == 3, timeout=10_000)
    names = lambda: [o.rsplit("/", 1)[-1] for o in outputs(window)]  # noqa: E731
    assert not window.findChild(QPushButton, "queueUpButton").isEnabled()  # nothing selected

    select(window, 2)
    click(qtbot, window, "queueUpButton")
    assert names() == ["a", "c", "b"] and [j.output[-1] for j in queue.jobs()] == ["a", "c", "b"]
    assert window.queuePanel.selected_id() == queue.jobs()[1].id  # the selection follows the job
    click(qtbot, window, "queueUpButton")
    assert names() == ["c", "a", "b"] and not window.findChild(QPushButton, "queueUpButton").isEnabled()
    click(qtbot, window, "queueDownButton")
    assert names() == ["a", "c", "b"]

    click(qtbot, window, "queueCancelButton")  # c, still selected
    assert states(window) == ["queued", "cancelled", "queued"] and queue.jobs()[1].state == "cancelled"
    assert not window.findChild(QPushButton, "queueCancelButton").isEnabled()
    click(qtbot, window, "queueRemoveButton")
    assert names() == ["a", "b"] and len(queue.jobs()) == 2

    click(qtbot, window, "queuePauseButton")
    assert queue.read().paused and window.findChild(QPushButton, "queuePauseButton").text() == "Resume"
    click(qtbot, window, "queuePauseButton")
    assert not queue.read().paused

    window.form.outputPathEdit.setText(str(tmp_path / "sweep"))
    click(qtbot, window, "queueSweepButton")
    dialog = window.findChild(QDialog, "sweepDialog")
    qtbot.waitUntil(dialog.isVisible)
    dialog.findChild(QCheckBox, "sweepRanks8Check").setChecked(True)  # rank 4 (the form's) is checked already
    dialog.findChild(QCheckBox, "sweepMethodsLoftqCheck").setChecked(True)
    dialog.accept()
    QApplication.processEvents()
    assert names()[2:] == ["sweep-r4-quailora-4bit", "sweep-r4-loftq-4bit", "sweep-r8-quailora-4bit",
                           "sweep-r8-loftq-4bit"]  # fmt: skip
    assert states(window)[2:] == ["queued"] * 4


def test_a_runner_started_in_a_terminal_is_shown_and_start_waits_for_it(qtbot, window, tiny_model_dir, text_file,
                                                                        tmp_path):  # fmt: skip
    configure(window, tiny_model_dir, text_file, tmp_path / "a", rank=4)
    click(qtbot, window, "addToQueueButton")
    start = window.findChild(QPushButton, "queueStartButton")
    assert start.isEnabled()
    terminal = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        JobQueue(default_queue_path()).attach_runner(terminal.pid)  # `quailora queue run` in a terminal
        qtbot.waitUntil(lambda: not start.isEnabled(), timeout=10_000)
        assert f"run by process {terminal.pid}" in window.queuePanel.queueStatusLabel.text()
    finally:
        terminal.communicate(b"")
    qtbot.waitUntil(start.isEnabled, timeout=10_000)  # it is gone: the app may run the queue again
