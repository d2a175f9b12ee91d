"""The History tab: runs on disk are listed, survive a restart (a new window lists and reopens
them with their charts and exports), an earlier run stays usable after Cancel of a new one,
Evaluate fills the perplexity table in the engine lane (one engine job at a time), and
Resume of a training run on disk is enabled only below its step budget.

The runs are made with the real engine on the tiny Llama of conftest.py; the training run by
the core's trainer in-process (no child process), under the test's output root.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from gui_helpers import configure, settle
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QPushButton, QTableWidget

from quailora_core.config import RunConfig
from quailora_core.history import load_init_run

RUN_TIMEOUT = 180_000
REPEATED = "The quick brown fox jumps over the lazy dog, and the dog sleeps in the sun. " * 40


def click(qtbot, button) -> None:
    assert button.isEnabled(), (button.objectName(), button.toolTip())
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def widget(window, cls, name):
    found = window.findChild(cls, name)
    assert found is not None, name
    return found


def root() -> Path:
    return Path(os.environ["QUAILORA_GUI_OUTPUT_ROOT"])


def init_config(model: Path, calibration: Path, output: Path) -> RunConfig:
    cfg = RunConfig(output=str(output))
    cfg.model.path, cfg.model.dtype = str(model), "float32"
    cfg.calibration.source = str(calibration)
    cfg.calibration.samples, cfg.calibration.seq_len, cfg.calibration.heldout_samples = 6, 48, 2
    cfg.init.device = "cpu"
    cfg.lora.rank, cfg.lora.alpha = 4, 8.0
    return cfg


def made_on_disk(model: Path, calibration: Path, name: str = "adapter") -> Path:
    """An init run under the output root, made by the engine as the command line makes it."""
    from quailora_core.init.pipeline import run_init

    out = root() / name
    run_init(init_config(model, calibration, out))
    return out


def listed(qtbot, window):
    """List the runs on disk again and wait for the table (the files are read off the GUI thread)."""
    with qtbot.waitSignal(window.history.refreshed, timeout=30_000) as blocker:
        window.history.refresh()
    return blocker.args[0]


def open_row(qtbot, window, path: Path, button: str = "historyOpenButton"):
    """Select the run in `path` and press `button`; wait until it is shown (or compared)."""
    assert window.history.select(str(path))
    with qtbot.waitSignal(window.history.opened, timeout=30_000) as blocker:
        click(qtbot, widget(window, QPushButton, button))
    return blocker.args[0]


def test_a_run_is_listed_and_a_new_window_reopens_it_and_keeps_it_after_a_cancel(
    qtbot, make_window, tiny_model_dir, text_file, tmp_path
):
    first = make_window()
    table = widget(first, QTableWidget, "historyTable")
    assert table.rowCount() == 0
    configure(first, tiny_model_dir, text_file, root() / "adapter")
    assert settle(qtbot, first).ok
    with qtbot.waitSignal(first.runEnded, timeout=RUN_TIMEOUT) as ended:
        click(qtbot, first.runButton)
    assert ended.args == ["finished"], first.logView.toPlainText()
    adapter = str((root() / "adapter").resolve())
    qtbot.waitUntil(lambda: table.rowCount() == 1)  # listed as soon as it finished
    assert [table.item(0, c).text() for c in (0, 1, 6)] == ["QuAILoRA / r4 / 4-bit NF4", "Initialization", adapter]
    first.shutdown()
    first.close()

    # a new window, as after a restart: the run is listed from disk, nothing is shown yet
    window = make_window()
    table = widget(window, QTableWidget, "historyTable")
    qtbot.waitUntil(lambda: table.rowCount() == 1)
    assert table.item(0, 6).text() == adapter
    assert not window.exportAdapterButton.isEnabled() and not window.exportRunButton.isEnabled()
    assert not widget(window, QPushButton, "historyOpenButton").isEnabled()  # no row selected
    open_row(qtbot, window, root() / "adapter")
    layers = load_init_run(adapter).layers
    assert window.layerErrorChart.entries() == [r.name for r in layers]
    assert window.resultsTableWidget.model.rowCount() == len(layers)
    assert window.displayed.output_dir == adapter and f"{len(layers)} layers" in window.summaryLabel.text()
    assert window.exportAdapterButton.isEnabled() and window.exportRunButton.isEnabled()
    assert window.exportMergedAction.isEnabled() and window.launchTrainingButton.isEnabled()
    assert [window.compareCombo.itemText(i) for i in range(window.compareCombo.count())] == [
        "None", "#1 QuAILoRA / r4 / 4-bit NF4"]  # fmt: skip
    with qtbot.waitSignal(window.exported, timeout=30_000) as exported:
        assert window.export_adapter(str(tmp_path / "copy")) == str(tmp_path / "copy")
    assert (tmp_path / "copy" / "adapter_model.safetensors").is_file(), exported.args
    with qtbot.waitSignal(window.exported, timeout=30_000):  # the run folder Launch would train
        assert window.export_run(str(tmp_path / "run")) == str(tmp_path / "run")
    exported_run = RunConfig.load(tmp_path / "run" / "run.toml")
    assert exported_run.train.adapter == str(tmp_path / "run" / "adapter") and exported_run.lora.rank == 4

    # a second run, cancelled after its first layer: the reopened run stays shown and usable
    configure(window, tiny_model_dir, text_file, root() / "adapter-2")
    assert settle(qtbot, window).ok
    release = threading.Event()

    def hold_after_first(event):
        if type(event).__name__ == "LayerResult" and event.index == 0:
            release.wait(30)

    def on_layer(event):
        if event.index == 0:
            click(qtbot, window.cancelButton)
            release.set()

    window.runStarted.connect(lambda handle: handle.event.connect(hold_after_first, Qt.ConnectionType.DirectConnection))
    window.layerReceived.connect(on_layer)
    with qtbot.waitSignal(window.runEnded, timeout=RUN_TIMEOUT) as ended:
        click(qtbot, window.runButton)
    assert ended.args == ["cancelled"] and release.is_set()
    assert window.displayed.output_dir == adapter
    assert window.layerErrorChart.entries() == [r.name for r in layers]
    assert window.exportAdapterButton.isEnabled() and window.exportRunButton.isEnabled()
    assert window.launchTrainingButton.isEnabled() and window.compareCombo.count() == 2


def test_two_reopened_runs_can_be_compared(qtbot, window, tiny_model_dir, text_file):
    a = made_on_disk(tiny_model_dir, text_file, "a")
    b = made_on_disk(tiny_model_dir, text_file, "b")
    with qtbot.waitSignal(window.history.refreshed):
        click(qtbot, widget(window, QPushButton, "historyRefreshButton"))
    open_row(qtbot, window, a)
    open_row(qtbot, window, b, "historyCompareButton")
    assert window.displayed.output_dir == str(a.resolve())  # compared, not shown
    compared = window.results_area.session.get(window.compareCombo.currentData())
    assert compared.output_dir == str(b.resolve())
    assert window.layerErrorChart.compare is compared.results


def test_evaluate_fills_the_table_in_the_engine_lane_and_can_be_cancelled(qtbot, window, tiny_model_dir, text_file):
    adapter = made_on_disk(tiny_model_dir, text_file)
    listed(qtbot, window)
    assert window.history.select(str(adapter))
    panel = window.history.panel
    panel.evalSamplesSpin.setValue(2)
    panel.evalSeqLenSpin.setValue(32)
    configure(window, tiny_model_dir, text_file, root() / "next")
    assert settle(qtbot, window).ok and window.runButton.isEnabled()
    evaluate = widget(window, QPushButton, "historyEvaluateButton")
    with qtbot.waitSignal(window.history.evalEnded, timeout=RUN_TIMEOUT) as ended:
        with qtbot.waitSignal(window.history.evaluated, timeout=RUN_TIMEOUT) as got:
            click(qtbot, evaluate)
            # one engine job at a time: no run and no second evaluation meanwhile
            assert window.state.evaluating and not window.runButton.isEnabled() and not evaluate.isEnabled()
            assert window.cancelButton.isEnabled() and "Evaluating" in window.runStatusLabel.text()
            assert not window.history.evaluate(window.history.selected())
    assert ended.args == ["finished"], window.logView.toPlainText()[-2000:]
    report = got.args[0]
    table = widget(window, QTableWidget, "evalTable")
    cells = [[table.item(r, c).text() for c in range(3)] for r in range(table.rowCount())]
    assert cells == [
        ["Full precision (the base model, not quantized)", f"{report.fp_loss:.4f}", f"{report.fp_perplexity:.3f}"],
        ["Quantized (4-bit NF4), no adapter", f"{report.quantized_loss:.4f}", f"{report.quantized_perplexity:.3f}"],
        ["Quantized (4-bit NF4) with this adapter", f"{report.adapter_loss:.4f}", f"{report.adapter_perplexity:.3f}"],
    ]
    assert report.adapter == str(adapter.resolve()) and (report.samples, report.seq_len) == (2, 32)
    assert evaluate.isEnabled() and window.runButton.isEnabled() and not window.state.evaluating

    # Cancel (the progress panel's button) stops it; the window is free again
    with qtbot.waitSignal(window.history.evalEnded, timeout=RUN_TIMEOUT) as ended:
        click(qtbot, evaluate)
        click(qtbot, window.cancelButton)
    assert ended.args == ["cancelled"] and table.rowCount() == 0
    assert "cancelled" in window.history.panel.evalSummaryLabel.text()
    assert evaluate.isEnabled() and window.runButton.isEnabled()


def exported_training(model, calibration, max_steps: int):
    """A run folder under the output root that trains an adapter made on disk for `max_steps`."""
    from quailora_core.train.export import export_run

    cfg = init_config(model, calibration, made_on_disk(model, calibration))
    data = root() / "repeated.txt"
    data.write_text(REPEATED, encoding="utf-8")
    t = cfg.train
    t.data, t.seq_len, t.batch_size, t.max_steps, t.eval_interval, t.save_interval = str(data), 32, 2, max_steps, 100, 100
    return export_run(cfg, root() / "adapter-training")


def test_a_training_run_on_disk_resumes_only_below_its_step_budget(qtbot, window, tiny_model_dir, text_file):
    from quailora_core.train.trainer import run_train

    run_dir = exported_training(tiny_model_dir, text_file, max_steps=2)
    run_train(RunConfig.load(run_dir / "run.toml"))
    listed(qtbot, window)
    table = widget(window, QTableWidget, "historyTable")
    assert window.history.select(str(run_dir / "output"))
    row = table.currentRow()
    assert table.item(row, 1).text() == "Training" and table.item(row, 5).text() == "trained, 2 / 2 steps"
    history_resume = widget(window, QPushButton, "historyResumeButton")
    assert not history_resume.isEnabled() and "raise Max steps" in history_resume.toolTip()
    assert not widget(window, QPushButton, "historyEvaluateButton").toolTip().startswith("The training has not")

    # Open: the adapter it trained is shown; Resume knows the run folder, but it is at its end
    assert open_row(qtbot, window, run_dir / "output") is window.displayed
    assert window.train_run_dir == str(run_dir) and window.displayed.output_dir == str((run_dir / "adapter").resolve())
    panel = window.trainingPanel
    assert panel.maxStepsSpin.value() == 2 and panel.trainOutputEdit.text() == f"{run_dir}-2"  # beside it, not in it
    xs, ys = panel.charts.loss_data()
    assert xs == [1, 2] and all(y > 0 for y in ys)  # its loss curve, read from metrics.json
    assert not window.resumeTrainingButton.isEnabled()
    assert "checkpoint-2" in window.resumeTrainingButton.toolTip() and "raise Max steps" in window.resumeTrainingButton.toolTip()
    panel.maxStepsSpin.setValue(4)  # a higher budget continues it
    assert window.resumeTrainingButton.isEnabled() and "raise" not in window.resumeTrainingButton.toolTip()


def test_the_evaluating_phase_excludes_every_other_engine_job():
    from quailora_gui.controllers.app_state import Action, AppState, Phase, TransitionError

    state = AppState()
    state.note(has_run=True, has_results=True)
    assert state.enabled(Action.EVALUATE) and state.enabled(Action.REOPEN)
    state.start_eval()
    assert state.phase is Phase.EVALUATING and state.evaluating and not state.running
    assert not (state.enabled(Action.RUN) or state.enabled(Action.EVALUATE) or state.enabled(Action.LAUNCH))
    assert state.enabled(Action.CANCEL) and state.enabled(Action.EXPORT_ADAPTER)  # the files lane is free
    for illegal in (state.start_eval, state.start_training, state.end_run):
        with pytest.raises(TransitionError):
            illegal()
    state.cancel()
    assert state.phase is Phase.EVAL_CANCELLING and not state.enabled(Action.CANCEL)
    state.end_eval()
    assert state.phase is Phase.IDLE and state.enabled(Action.EVALUATE)
    report = SimpleNamespace(ok=True, errors={}, generation=state.new_check())
    assert state.take_report(report)
    state.start_run()  # and the other way round: no evaluation, no reopening while a run streams in
    assert not (state.enabled(Action.EVALUATE) or state.enabled(Action.REOPEN))
    with pytest.raises(TransitionError):
        state.start_eval()


def test_a_run_written_outside_the_output_root_is_listed_too(qtbot, window, tiny_model_dir, text_file, tmp_path):
    configure(window, tiny_model_dir, text_file, tmp_path / "elsewhere" / "adapter")
    assert settle(qtbot, window).ok
    with qtbot.waitSignal(window.history.refreshed, timeout=RUN_TIMEOUT,
                          check_params_cb=lambda history: bool(history.entries)) as refreshed:  # fmt: skip
        click(qtbot, window.runButton)
    assert [e.path for e in refreshed.args[0].entries] == [str((tmp_path / "elsewhere" / "adapter").resolve())]
    table = widget(window, QTableWidget, "historyTable")
    assert table.rowCount() == 1 and root() not in Path(refreshed.args[0].entries[0].path).parents


def test_an_evaluation_that_fails_says_why_in_a_dialog_and_the_log(qtbot, window, tiny_model_dir, text_file, tmp_path):
    from PySide6.QtWidgets import QMessageBox

    adapter = made_on_disk(tiny_model_dir, text_file)
    listed(qtbot, window)
    assert window.history.select(str(adapter))
    window.history.panel.evalDataEdit.setText(str(tmp_path / "missing.txt"))
    with qtbot.waitSignal(window.history.evalEnded, timeout=RUN_TIMEOUT) as ended:
        click(qtbot, widget(window, QPushButton, "historyEvaluateButton"))
    assert ended.args == ["failed"]
    dialog = window.findChild(QMessageBox, "errorDialog")
    assert dialog is not None and "missing.txt" in dialog.text()
    assert "Evaluation failed" in window.logView.toPlainText() and window.history.panel.evalTable.rowCount() == 0
    assert not window.state.evaluating and widget(window, QPushButton, "historyEvaluateButton").isEnabled()


def test_a_stopped_training_on_disk_is_resumed_from_the_history(qtbot, window, tiny_model_dir, text_file):
    from quailora_core.events import CancelToken, TrainStep
    from quailora_core.train.trainer import TrainingCancelled, run_train

    run_dir = exported_training(tiny_model_dir, text_file, max_steps=4)
    cancel = CancelToken()
    with pytest.raises(TrainingCancelled):  # as Stop, or a closed window, leaves it: checkpoint-2
        run_train(RunConfig.load(run_dir / "run.toml"),
                  lambda e: cancel.cancel() if isinstance(e, TrainStep) and e.step == 2 else None, cancel)  # fmt: skip
    listed(qtbot, window)
    assert window.history.select(str(run_dir / "output"))
    resume = widget(window, QPushButton, "historyResumeButton")
    window.training_env["OMP_NUM_THREADS"] = "1"
    steps: list[TrainStep] = []
    window.trainingStep.connect(steps.append)
    with qtbot.waitSignal(window.trainingFinished, timeout=RUN_TIMEOUT) as finished:
        with qtbot.waitSignal(window.trainingStarted, timeout=30_000):  # once the run is opened
            click(qtbot, resume)
        assert "--resume" in window.train_process.process.arguments()
    assert [e.step for e in steps] == [3, 4] and finished.args[0].step == 4
    xs, _ = window.trainingPanel.charts.loss_data()
    assert xs == [1, 2, 3, 4]  # the curve read from disk, continued
    qtbot.waitUntil(lambda: window.history.selected() is not None and window.history.selected().finished)
    assert window.history.selected().steps_done == 4  # listed again after it finished
