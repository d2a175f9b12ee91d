"""The Training tab: launch the exported run's command as a child process from the window,
live curves with the trainer's numbers, Stop (the whole process gone, a checkpoint kept),
Resume (the step count goes on), a failing run explained in a dialog, and Export run.

The child trains the tiny Llama of conftest.py on one CPU thread (OMP_NUM_THREADS=1 in its
environment: on a busy two-core machine two threads make each step ~100x slower).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from gui_helpers import configure, settle
from PySide6.QtCore import QProcess, Qt
from PySide6.QtWidgets import QDialog, QFileDialog, QMessageBox, QPlainTextEdit

from quailora_core.events import EvalResult, Failed, Finished, TrainStep, event_to_json
from quailora_gui.controllers.training import LineBuffer, TrainingState, parse_line, train_command

CHILD_TIMEOUT = 120_000  # a child process loads torch + transformers (~10 s here) before its first step
REPEATED = "The quick brown fox jumps over the lazy dog, and the dog sleeps in the sun. " * 40


def click(qtbot, button) -> None:
    assert button.isEnabled(), button.objectName()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def initialized_window(qtbot, window, model, text_file, tmp_path: Path):
    """A window with one finished initialization run (its adapter is what training starts from)."""
    configure(window, model, text_file, tmp_path / "adapter", rank=4, bits=4)
    assert settle(qtbot, window).ok
    assert not window.launchTrainingButton.isEnabled() and not window.exportRunButton.isEnabled()
    with qtbot.waitSignal(window.runEnded, timeout=180_000) as blocker:
        click(qtbot, window.runButton)
    assert blocker.args == ["finished"], window.logView.toPlainText()
    window.training_env["OMP_NUM_THREADS"] = "1"
    window.tabs.setCurrentWidget(window.trainingPanel)
    return window


def fill_training(window, data: Path, output: Path, max_steps: int) -> None:
    p = window.trainingPanel
    p.trainDataEdit.setText(str(data))
    p.maxStepsSpin.setValue(max_steps)
    p.learningRateSpin.setValue(5e-3)
    p.trainBatchSizeSpin.setValue(2)
    p.gradAccumSpin.setValue(1)
    p.trainSeqLenSpin.setValue(32)
    p.evalIntervalSpin.setValue(10)
    p.saveIntervalSpin.setValue(1000)  # the only checkpoint is the one Stop saves
    p.trainOutputEdit.setText(str(output))  # the panel tells the window's state (Launch needs a folder)


def launch(qtbot, window) -> Path:
    """Click Launch; the run folder the training child started in."""
    with qtbot.waitSignal(window.trainingStarted, timeout=30_000) as started:
        click(qtbot, window.launchTrainingButton)
    return Path(started.args[0])


def test_launch_stream_stop_and_resume(qtbot, window, tiny_model_dir, text_file, tmp_path):
    initialized_window(qtbot, window, tiny_model_dir, text_file, tmp_path)
    data = tmp_path / "repeated.txt"
    data.write_text(REPEATED, encoding="utf-8")
    fill_training(window, data, tmp_path / "training", max_steps=60)
    steps: list[TrainStep] = []
    window.trainingStep.connect(steps.append)

    run_dir = launch(qtbot, window)
    assert (
        run_dir == tmp_path / "training"
        and (run_dir / "run.toml").is_file()
        and (run_dir / "launch.sh").is_file()
    )
    assert window.train_process.process.arguments()[-2:] == [str(run_dir / "run.toml"), "--json"]
    assert window.train_process.process.processEnvironment().value("OMP_NUM_THREADS") == "1"
    pid = window.train_process.pid
    assert pid > 0 and os.getpgid(pid) == pid  # its own process group: Stop reaches all of it
    assert not window.runButton.isEnabled() and not window.launchTrainingButton.isEnabled()
    assert window.stopTrainingButton.isEnabled()

    # loss points arrive on the chart: exactly the TrainStep losses received
    with qtbot.waitSignal(window.trainingStep, timeout=CHILD_TIMEOUT, check_params_cb=lambda e: e.step >= 3):
        pass
    xs, ys = window.trainingPanel.charts.loss_data()
    assert xs == [e.step for e in steps] and ys == pytest.approx([e.loss for e in steps], rel=1e-12)
    assert [e.step for e in steps] == list(range(1, len(steps) + 1)) and steps[0].total_steps == 60
    stats = window.trainingPanel.trainStatsLabel.text()
    assert "Tokens/s" in stats and f"{steps[-1].tokens_per_second:,.0f}" in stats
    assert window.progressBar.format() == "%v / %m steps" and window.progressBar.maximum() == 60

    # Stop: SIGTERM to the group; the trainer checkpoints at the step end; the process is gone
    with qtbot.waitSignal(window.trainingStopped, timeout=60_000) as stopped:
        click(qtbot, window.stopTrainingButton)
    assert window.train_process.process.state() == QProcess.ProcessState.NotRunning
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    last = steps[-1].step
    assert stopped.args[0].step == last < 60, window.logView.toPlainText()[-3000:]
    assert (run_dir / "output" / f"checkpoint-{last}" / "trainer_state.json").is_file()
    # issue 14: the user's Stop was logged as two "error:" lines; now once, as a plain line
    lines = window.logView.toPlainText().splitlines()
    since = lines[next(i for i, line in enumerate(lines) if "Stop requested" in line):]
    said = [line for line in since if "Training stopped" in line]
    assert len(said) == 1 and f"at step {last}; checkpoint saved" in said[0] and "Resume continues it" in said[0]
    assert not [line for line in since if "error:" in line or "warning:" in line], "\n".join(since)
    assert window.resumeTrainingButton.isEnabled() and window.runButton.isEnabled()

    # Resume: the same run folder with --resume; the step count goes on to the end
    received = len(steps)
    with qtbot.waitSignal(window.trainingFinished, timeout=CHILD_TIMEOUT) as finished:
        click(qtbot, window.resumeTrainingButton)
        assert "--resume" in window.train_process.process.arguments()
    resumed = [e.step for e in steps[received:]]
    assert resumed == list(range(last + 1, 61)), resumed
    assert finished.args[0].kind == "finished" and finished.args[0].step == 60
    xs, ys = window.trainingPanel.charts.loss_data()
    assert xs == list(range(1, 61)) and ys == pytest.approx([e.loss for e in steps], rel=1e-12)
    eval_x, _ = window.trainingPanel.charts.evalPoints.getData()
    assert 10 in list(eval_x) and 60 in list(eval_x)
    metrics = json.loads((run_dir / "output" / "metrics.json").read_text())
    assert metrics["global_step"] == 60 and metrics["resumed_from"] == f"checkpoint-{last}"
    assert (run_dir / "output" / "adapter" / "adapter_model.safetensors").is_file()
    view = f"tensorboard --logdir {run_dir / 'output' / 'logs'}"  # where the logs are, how to view them
    assert view in window.trainingPanel.trainStatusLabel.text() and view in window.logView.toPlainText()
    assert list((run_dir / "output" / "logs").glob("events.out.tfevents.*"))
    # the next launch gets a fresh folder; everything is enabled again
    assert window.trainingPanel.trainOutputEdit.text() == f"{tmp_path / 'training'}-2"
    assert window.launchTrainingButton.isEnabled() and window.runButton.isEnabled()


def test_failing_run_shows_its_cause_and_export_run_still_works(
    qtbot, window, tiny_model_dir, text_file, tmp_path, monkeypatch
):
    initialized_window(qtbot, window, tiny_model_dir, text_file, tmp_path)
    bad = tmp_path / "pairs.jsonl"
    bad.write_text("".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) + "\n" for i in range(8)))
    fill_training(window, bad, tmp_path / "training", max_steps=5)
    with qtbot.waitSignal(window.trainingFailed, timeout=CHILD_TIMEOUT) as failed:
        click(qtbot, window.launchTrainingButton)
    outcome = failed.args[0]
    assert "question" in outcome.message and outcome.hint, outcome  # the fields it found, and what it needs
    dialog = window.findChild(QMessageBox, "errorDialog")
    assert dialog is not None and dialog.isVisible() and dialog.text() == outcome.message
    assert dialog.informativeText() == outcome.hint
    assert outcome.message in window.logView.toPlainText()
    assert window.train_process.process.state() == QProcess.ProcessState.NotRunning
    dialog.close()

    # the window keeps working: Export run writes the folder and says how to start it
    good = tmp_path / "repeated.txt"
    good.write_text(REPEATED, encoding="utf-8")
    window.trainingPanel.trainDataEdit.setText(str(good))
    dest = tmp_path / "exported"
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(dest))
    import threading

    import quailora_core.train.export as run_export

    threads = []  # the real export_run, called from whichever thread the window uses

    def export_run(*args, **kwargs):
        threads.append(threading.current_thread())
        return real_export_run(*args, **kwargs)

    real_export_run = run_export.export_run
    monkeypatch.setattr(run_export, "export_run", export_run)
    with qtbot.waitSignal(window.exported, timeout=30_000):
        click(qtbot, window.exportRunButton)
    # copying the data happened in a worker thread: the window stays responsive for big folders
    assert len(threads) == 1 and threads[0] is not threading.main_thread()
    assert sorted(p.name for p in dest.iterdir()) == ["README.md", "accelerate_config.yaml", "adapter", "data", "launch.sh", "run.toml"]
    run_toml = (dest / "run.toml").read_text()
    assert 'data = "data/repeated.txt"' in run_toml and "max_steps = 5" in run_toml
    export_dialog = window.findChild(QDialog, "exportDialog")
    assert export_dialog.isVisible() and str(dest) in export_dialog.whereLabel.text()
    code = export_dialog.findChild(QPlainTextEdit, "loadingCodeView").toPlainText()
    assert str(dest / "launch.sh") in code and f"python -m quailora_core.train {dest / 'run.toml'}" in code
    export_dialog.close()
    assert window.launchTrainingButton.isEnabled() and window.runButton.isEnabled()

    # the run kind chosen here is the exported folder's: data parallel goes into run.toml and the
    # accelerate config launch.sh passes; FSDP on this adapter (4-bit weights stored as uint8) is refused
    # before anything is written, naming the settings to change
    panel = window.trainingPanel
    panel.runKindCombo.setCurrentIndex(panel.runKindCombo.findData("ddp"))
    ddp = tmp_path / "ddp"
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(ddp))
    with qtbot.waitSignal(window.exported, timeout=30_000):
        click(qtbot, window.exportRunButton)
    assert 'launch = "ddp"' in (ddp / "run.toml").read_text()
    assert "MULTI_GPU" in (ddp / "accelerate_config.yaml").read_text()
    window.findChild(QDialog, "exportDialog").close()
    panel.runKindCombo.setCurrentIndex(panel.runKindCombo.findData("fsdp"))
    fsdp = tmp_path / "fsdp"
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(fsdp))
    with qtbot.waitSignal(window.exportFailed, timeout=30_000) as refused:
        click(qtbot, window.exportRunButton)
    error = refused.args[0]
    assert "quant_storage" in f"{error.message} {error.hint}" and not fsdp.exists()
    shown = window.findChildren(QMessageBox, "errorDialog")[-1]  # the dialog says it too
    assert error.message == shown.text()


TRAINING_INPUTS = [
    "trainDataEdit", "dataFormatCombo", "trainTextColumnEdit", "validationDataEdit", "validationFractionSpin",
    "maxStepsSpin", "epochsSpin", "learningRateSpin", "trainBatchSizeSpin", "gradAccumSpin",
    "trainSeqLenSpin", "evalIntervalSpin", "saveIntervalSpin", "warmupSpin", "trainSeedSpin", "trackingCombo",
    "runKindCombo", "trainProcessesSpin", "trainOutputEdit", "launchTrainingButton", "exportRunButton", "stopTrainingButton", "resumeTrainingButton",
]  # fmt: skip


def test_training_controls_are_named_with_a_usual_value_and_wait_for_a_finished_run(window):
    from PySide6.QtWidgets import QWidget

    for name in [*TRAINING_INPUTS, "lossChart", "lrChart", "perplexityChart", "trainStatsLabel"]:
        widget = window.findChild(QWidget, name)
        assert widget is not None, name
        tip = widget.toolTip()
        assert tip and tip.endswith(".") and tip.count(". ") == 0, (name, tip)
        if name in TRAINING_INPUTS:
            assert "usual" in tip, (name, tip)
    for name in ("launchTrainingButton", "exportRunButton", "stopTrainingButton", "resumeTrainingButton"):
        assert not window.findChild(QWidget, name).isEnabled(), name
    assert window.trainingPanel.trainDataEdit.text() == "demo"  # the built-in fine-tuning text


def test_training_tab_speaks_the_apps_words_not_the_command_lines(window):
    """Labels, placeholders and tooltips of the Training tab name no flag or run-file section."""
    from PySide6.QtWidgets import QComboBox, QLabel, QLineEdit, QWidget

    panel = window.trainingPanel
    texts = [w.toolTip() for w in panel.findChildren(QWidget)]
    texts += [w.text() for w in panel.findChildren(QLabel)] + [w.placeholderText() for w in panel.findChildren(QLineEdit)]
    texts += [c.itemText(i) for c in panel.findChildren(QComboBox) for i in range(c.count())]
    bad = [t for t in texts if re.search(r"--[a-z]|\[train\]|\[model\]|quailora (train|init)", t)]
    assert not bad, bad
    assert "usual: tensorboard" in panel.trackingCombo.toolTip()


def test_data_paths_are_checked_as_they_change(qtbot, window, text_file, tmp_path):
    p = window.trainingPanel
    missing = tmp_path / "missing.jsonl"
    p.trainDataEdit.setText(str(missing))
    assert not p.trainDataError.isHidden()
    assert "does not exist" in p.trainDataError.text() and p.trainDataEdit.property("invalid") == "true"
    p.trainDataEdit.setText(str(text_file))
    assert p.trainDataError.isHidden() and p.trainDataEdit.property("invalid") == "false"
    p.trainDataEdit.setText("")
    assert "no training data" in p.trainDataError.text().lower()
    p.trainDataEdit.setText("demo")
    assert p.trainDataError.isHidden()
    assert p.validationFractionSpin.isEnabled() and p.validationDataError.isHidden()  # empty: a share held out
    p.validationDataEdit.setText(str(missing))
    assert "Validation data" in p.validationDataError.text() and not p.validationDataError.isHidden()
    assert not p.validationFractionSpin.isEnabled()  # a validation source replaces the share
    p.validationDataEdit.setText(str(text_file))
    assert p.validationDataError.isHidden() and p.validationDataEdit.property("invalid") == "false"


def test_only_installed_trackers_can_be_chosen(qtbot, make_window):
    from quailora_core.config import TRACKERS
    from quailora_core.train.tracking import is_installed

    with qtbot.waitSignal((w := make_window()).engineReady, timeout=120_000):
        pass
    combo = w.trainingPanel.trackingCombo
    assert [combo.itemData(i) for i in range(combo.count())] == list(TRACKERS)
    assert combo.currentData() == "tensorboard"
    enabled = {combo.itemData(i): combo.model().item(i).isEnabled() for i in range(combo.count())}
    assert enabled == {name: is_installed(name) for name in TRACKERS}
    assert enabled["tensorboard"] and enabled["none"]


def test_training_settings_are_saved_with_the_run_and_restored(qtbot, make_window, text_file, tmp_path, monkeypatch):
    from quailora_core.config import RunConfig

    first = make_window()
    p = first.trainingPanel
    p.trainDataEdit.setText(str(text_file))
    p.dataFormatCombo.setCurrentIndex(p.dataFormatCombo.findData("text"))
    p.trainTextColumnEdit.setText("body")
    p.validationDataEdit.setText(str(text_file))
    p.validationFractionSpin.setValue(0.125)
    p.warmupSpin.setValue(7)
    p.trainSeedSpin.setValue(42)
    p.maxStepsSpin.setValue(33)
    p.trackingCombo.setCurrentIndex(p.trackingCombo.findData("none"))
    saved = tmp_path / "run.toml"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(saved), "Run files (*.toml)"))
    first.saveRunAction.trigger()
    t = RunConfig.load(saved).train
    shown = {"data": str(text_file), "data_format": "text", "text_column": "body", "validation_data": str(text_file),
             "validation_fraction": 0.125, "warmup_steps": 7, "seed": 42, "max_steps": 33, "tracking": "none"}  # fmt: skip
    assert {k: getattr(t, k) for k in shown} == shown

    def on_tab(w) -> dict:
        return {k: w.trainingPanel.settings()[k] for k in shown}

    other = make_window(restore_settings=False)  # File > Open run
    assert on_tab(other)["tracking"] == "tensorboard"
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(saved), "Run files (*.toml)"))
    other.openRunAction.trigger()
    assert on_tab(other) == shown
    first.shutdown()  # remembers the settings; a restart shows them again
    first.close()
    assert on_tab(make_window()) == shown


# ---------------------------------------------------------------------------- Qt-free parts
def test_training_controller_imports_without_qt():
    code = (
        "import sys, quailora_gui.controllers.training\n"
        "bad = [m for m in sys.modules if m.startswith(('PySide6', 'pyqtgraph', 'torch'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lines_events_eta_and_outcomes():
    buf = LineBuffer()
    line = event_to_json(TrainStep(1, 10, 2.5, 1e-4, 1000.0)).encode()
    assert buf.feed(line[:7]) == [] and buf.feed(line[7:] + b'\nnot json\n{"half') == [
        line.decode(),
        "not json",
    ]
    assert buf.flush() == ['{"half'] and buf.flush() == []
    assert parse_line("not json") is None and parse_line('{"event": "Nope"}') is None
    assert parse_line(line.decode()) == TrainStep(1, 10, 2.5, 1e-4, 1000.0)

    now = [0.0]
    state = TrainingState(clock=lambda: now[0])
    state.begin()
    for step in range(1, 5):
        now[0] = 10.0 + 2.0 * step
        state.on_event(TrainStep(step, 10, 3.0 - step / 10, 1e-4, 500.0, 1.5 if step == 4 else None))
    state.on_event(EvalResult(4, 2.0, 7.389))
    assert state.eta_seconds() == pytest.approx(2.0 * 6)  # 2 s per step, 6 steps left
    stats = dict(state.stats())
    assert stats["Step"] == "4 / 10" and stats["Tokens/s"] == "500" and stats["GPU memory"] == "1.5 GiB"
    assert stats["Validation perplexity"] == "7.389"
    assert state.smoothed_losses()[0] == pytest.approx(2.9) and 2.6 < state.smoothed_losses()[-1] < 2.75
    # a resume that re-logs steps replaces them instead of doubling the curve
    state.begin()
    state.on_event(TrainStep(4, 10, 1.0, 1e-4, 500.0))
    assert state.steps == [1, 2, 3, 4] and state.losses[-1] == 1.0

    assert state.outcome(1, False, stop_requested=True, checkpoint_in="/x/output").kind == "stopped"
    state.on_event(Failed("The data has no text.", "Use a text column."))
    out = state.outcome(2, False, stop_requested=False)
    assert (out.kind, out.message, out.hint) == ("failed", "The data has no text.", "Use a text column.")
    crashed = TrainingState()
    crashed.on_stderr("Traceback ...")
    crashed.on_stderr("RuntimeError: CUDA out of memory")
    out = crashed.outcome(9, True, stop_requested=False)
    assert out.kind == "failed" and "out of memory" in out.hint and "CUDA out of memory" in out.details
    out = crashed.outcome(1, False, stop_requested=False)
    assert out.message == "The training process exited with code 1: RuntimeError: CUDA out of memory"
    done = TrainingState()
    done.on_event(Finished("/x/output"))
    assert done.outcome(0, False, stop_requested=True).kind == "finished"  # it ended before the stop
    cmd, env = train_command("/r", resume=True, max_steps=80)
    assert cmd[1:] == ["-m", "quailora_core.train", "/r/run.toml", "--json", "--resume", "--max-steps", "80"]
    assert env == {}  # one process: the run's own command, no launcher


def test_launch_into_a_used_folder_explains_why_and_starts_nothing(
    qtbot, window, tiny_model_dir, text_file, tmp_path
):
    """The export runs in a worker thread; its refusal comes back as a dialog, the actions
    come back, and no child process is started."""
    initialized_window(qtbot, window, tiny_model_dir, text_file, tmp_path)
    data = tmp_path / "repeated.txt"
    data.write_text(REPEATED, encoding="utf-8")
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("someone else's file", encoding="utf-8")
    fill_training(window, data, used, max_steps=5)
    started: list[str] = []
    window.trainingStarted.connect(started.append)
    click(qtbot, window.launchTrainingButton)
    assert window.exporting and not window.launchTrainingButton.isEnabled()
    qtbot.waitUntil(lambda: not window.exporting, timeout=30_000)
    dialog = window.findChild(QMessageBox, "errorDialog")
    assert dialog is not None and dialog.isVisible() and str(used) in dialog.text() + dialog.informativeText()
    assert dialog.windowTitle() == "Cannot launch the training"
    assert sorted(p.name for p in used.iterdir()) == ["notes.txt"]  # nothing written there
    assert not started and window.train_process.process.state() == QProcess.ProcessState.NotRunning
    assert window.launchTrainingButton.isEnabled() and window.exportRunButton.isEnabled()
    dialog.close()


def test_library_progress_bars_reach_the_log_as_plain_text(qtbot, window, tiny_model_dir, tmp_path):
    # issue 14: a library's tqdm bar in the child's stderr (transformers' "Loading weights":
    # block characters, one line per redraw) reached the log as it was drawn. The training
    # child turns transformers' bars off (--json), but any library's bar on its stderr takes
    # this path: the window's training process, a real transformers load, bars on.
    script = "import sys; from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained(sys.argv[1])"
    raw: list[str] = []
    process = window.train_process
    process.errorLine.connect(raw.append)
    with qtbot.waitSignal(process.ended, timeout=CHILD_TIMEOUT) as ended:
        process.start([sys.executable, "-c", script, str(tiny_model_dir)], str(tmp_path), {"HF_HUB_OFFLINE": "1"})
    assert ended.args[0] == 0, raw
    assert any("Loading weights" in line and "%|" in line for line in raw), raw  # the library did draw a bar
    log = window.findChild(QPlainTextEdit, "logView").toPlainText()
    shown = [line for line in log.splitlines() if "Loading weights" in line]
    assert len(shown) == 1 and re.search(r"training: Loading weights: 100% (\d+)/\1 ", shown[0]), shown
    assert not re.search("[\u2580-\u259f\r]|\\d%\\|", log), log[-3000:]


def test_plain_line_keeps_only_a_finished_bar_without_its_blocks():
    from quailora_gui.controllers.training import plain_line

    assert plain_line("Loading weights:   0%|          | 0/39 [00:00<?, ?it/s]") is None
    assert plain_line("Map:  40%|####      | 4/10 [00:01<00:02]\rMap: 100%|##########| 10/10 [00:02<00:00]") == \
        "Map: 100% 10/10 [00:02<00:00]"
    assert plain_line("Loading weights: 100%|\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588| 39/39 "
                      "[00:00<00:00, 20583.60it/s]") == "Loading weights: 100% 39/39 [00:00<00:00, 20583.60it/s]"
    assert plain_line("  File \"x.py\", line 3") == "  File \"x.py\", line 3" and plain_line(" \r ") is None
    assert plain_line("a | b | c") == "a | b | c"


def test_launch_plan_starts_what_this_machine_can_run_and_says_why_not():
    """Launch's processes from the run kind, Processes (0 = the kind's own, as launch.sh counts)
    and the GPUs torch sees; a sharded kind in several CPU processes is refused before any file
    is written, as the core's check would refuse it after the export."""
    from quailora_gui.controllers.training import launch_plan

    assert launch_plan("single", 0, gpus=0) == launch_plan("single", 1, gpus=8)  # one process, no note
    assert launch_plan("single", 0, gpus=8).processes == 1 and launch_plan("ddp", 0, gpus=8).processes == 8
    cpu = launch_plan("ddp", 2, gpus=0)
    assert cpu.processes == 2 and not cpu.problem and "data parallel on the CPU" in cpu.note
    for kind in ("fsdp", "deepspeed"):
        refused = launch_plan(kind, 2, gpus=0)
        assert "this machine has none" in refused.problem and 'choose the run kind "data parallel" to train on the CPU' in refused.problem
        assert launch_plan(kind, 2, gpus=2).note.startswith("Training in 2 processes, one per GPU")
        assert "nothing is sharded" in launch_plan(kind, 0, gpus=0).warning  # auto: 1 without GPUs
    assert "this machine has 2" in launch_plan("ddp", 4, gpus=2).problem
    assert "bash" in launch_plan("ddp", 2, gpus=2, posix=False).problem
    assert not launch_plan("single", 1, gpus=0, posix=False).problem  # one process needs no bash

    cmd, env = train_command("/r", resume=True, max_steps=9, processes=2)
    assert cmd == ["bash", "/r/launch.sh", "--json", "--resume", "--max-steps", "9"]
    assert env["NUM_PROCESSES"] == "2" and env["PYTHON"] == sys.executable
    assert Path(env["ACCELERATE"]).name == "accelerate" and env["MAIN_PROCESS_PORT"] == "0"  # a free port
