"""The main window: run form on the left, live charts in the centre, progress and log below.

The window is the shell that composes the parts and owns the one state machine
(`controllers.app_state.AppState`): the buttons and actions follow it (`_apply_state`), and
the parts move it. Every background job goes through the one task runner (`runner.TaskRunner`):
the initialization (`init_run.InitRun`), the engine warm-up and the form checks
(`checking.FormChecks`), the exports (`export_actions.ExportActions`); training is a child
process (`training_control.TrainingControl`), and so is the job queue's runner
(`queue_view.QueueControl`, the Queue tab). The centre is `results_view.ResultsArea`; its
History tab (`history_view.HistoryControl`) lists, reopens and evaluates the runs on disk.
"""

from __future__ import annotations

import copy
from html import escape
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QCloseEvent, QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QHBoxLayout,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..controllers.app_state import Action, AppState, Checks
from ..controllers.paths import classify_path, is_free_output, model_path_for, next_free_output
from .checking import FormChecks
from .common import app_icon, named, role_label, shrinkable
from .dialogs import show_input_error
from .export_actions import ExportActions
from .form_view import RunForm
from .history_view import HistoryControl
from .init_run import InitRun
from .menus import build_menus
from .panels import ProgressPanel
from .queue_view import QueueControl, QueuePanel
from .results_view import ResultsArea
from .runner import TaskRunner
from .training_control import TrainingControl
from .training_view import TrainingPanel
from .window_settings import WindowSettings

# action -> the widgets and menu actions it enables (attribute names of the window)
ENABLES: tuple[tuple[Action, tuple[str, ...]], ...] = (
    (Action.RUN, ("runButton", "runAction")),
    (Action.CANCEL, ("cancelButton", "cancelAction")),
    (Action.EXPORT_ADAPTER, ("exportAdapterButton", "exportAdapterAction")),
    (Action.EXPORT_MERGED, ("exportMergedAction",)),
    (Action.EXPORT_GGUF, ("exportGgufAction",)),
    (Action.EXPORT_CHARTS, ("exportChartsButton", "exportChartsAction")),
    (Action.EXPORT_CSV, ("exportCsvButton", "exportCsvAction")),
    (Action.EXPORT_RUN, ("exportRunButton",)),
    (Action.LAUNCH, ("launchTrainingButton",)),
    (Action.STOP, ("stopTrainingButton",)),
    (Action.RESUME, ("resumeTrainingButton",)),
    (Action.OPEN_RUN, ("openRunAction",)),
    (Action.EDIT_FORM, ("form",)),
)
# widgets of the parts that tests and users' scripts reach through the window
CENTRE = ("logScaleCheck", "compareCombo", "exportAdapterButton", "exportChartsButton", "exportCsvButton",
          "summaryLabel", "layerErrorChart", "heatMap", "resultsTableWidget", "resultsTable", "comparePanel",
          "tabs")  # fmt: skip
TRAINING = ("lossChart", "lrChart", "launchTrainingButton", "exportRunButton", "stopTrainingButton",
            "resumeTrainingButton")  # fmt: skip


def default_output_root() -> str:
    from quailora_core.files import output_root  # the one rule, shared with the job queue

    return str(output_root())


class MainWindow(QMainWindow):
    """QuAILoRA Studio's window. Tests wait on its signals and drive its named widgets."""

    runStarted = Signal(object)  # the run's TaskHandle (its `event` signal fires in the engine thread), before it starts
    layerReceived = Signal(object)  # each LayerResult, after the charts were updated
    runFinished = Signal(object)  # InitResult
    runFailed = Signal(object)  # quailora_core.events.Failed
    runCancelled = Signal()
    runEnded = Signal(str)  # "finished" | "failed" | "cancelled", after the specific signal
    checksFinished = Signal(object)  # CheckReport of the current form
    engineReady = Signal()
    exported = Signal(object)  # list of (what, path) written
    exportFailed = Signal(object)  # the error an export ended with, after its dialog opened
    trainingStarted = Signal(str)  # the run folder the child process trains in
    trainingStep = Signal(object)  # each TrainStep, after the charts were updated
    rankProgress = Signal(object)  # each RankProgress (several processes), after the per-process table
    launchRefused = Signal(str)  # why Launch or Resume cannot start the run here (nothing was written)
    trainingFinished = Signal(object)  # controllers.training.Outcome
    trainingFailed = Signal(object)  # Outcome (message, hint, details: the cause)
    trainingStopped = Signal(object)  # Outcome

    def __init__(self, config: Any | None = None, engine: Any = None, restore_settings: bool = True) -> None:
        super().__init__()
        self.setObjectName("mainWindow")
        self.setWindowTitle("QuAILoRA Studio")
        self.setWindowIcon(app_icon())
        self.setAcceptDrops(True)
        self.resize(1480, 920)

        self.state = AppState()
        self.tasks = TaskRunner(self)
        self.tasks.started.connect(self._on_task_started)
        self.prefs = WindowSettings()
        self.settings = self.prefs.store
        self._dialogs: list[QWidget] = []
        self._shut_down = False
        self._ask_on_close = True  # False when a signal closes the window: nobody may be there to answer

        self._build_ui()
        build_menus(self)
        self.checks = FormChecks(self)
        self.init_run = InitRun(self, engine)
        self.exports = ExportActions(self)
        self.training_control = TrainingControl(self, self.trainingPanel)
        self.queue_control = QueueControl(self, self.queuePanel)
        self.history = HistoryControl(self)  # the History tab: runs on disk, reopened and evaluated
        self.state.subscribe(self._apply_state)

        self.form.changed.connect(self.checks.form_changed)
        self.form.modelChosen.connect(self.remember_model)
        self.form.calibrationChosen.connect(self.remember_calibration)
        self.form.set_recent(self.recent_models.items, self.recent_calibration.items)
        if restore_settings:
            self.prefs.restore_window(self)
        if config is None and restore_settings:
            config = self.prefs.last_config()
            if config is not None and config.output and not is_free_output(config.output):
                # the last session's run (or one killed before it saved) filled it: never propose a
                # folder Run would refuse
                config.output = next_free_output(config.output)
        self.form.set_config(config if config is not None else self.default_config())
        self.training_control.show_settings(self.form.to_config())
        self._apply_state(self.state)
        self.checks.warm_up()

    # ================================================================== construction
    def _build_ui(self) -> None:
        self.form = RunForm()
        self.runButton = named(QPushButton("Run"), "runButton")
        self.runButton.setEnabled(False)
        self.runButton.clicked.connect(self.start_run)
        self.runStatusLabel = role_label("Checking the settings…", "hint", "runStatusLabel")
        shrinkable(self.runStatusLabel)
        self.runStatusLabel.setTextFormat(Qt.TextFormat.RichText)
        self.runStatusLabel.linkActivated.connect(self.form.show_field)
        left = QWidget()
        left.setObjectName("leftPanel")
        lay = QVBoxLayout(left)
        lay.setContentsMargins(0, 0, 0, 6)
        lay.setSpacing(4)
        lay.addWidget(self.form, 1)
        bar = QHBoxLayout()
        bar.setContentsMargins(10, 0, 10, 0)
        self.addToQueueButton = named(QPushButton("Add to queue"), "addToQueueButton",
                                      "Queue this run: the Queue tab runs it after the ones before it")  # fmt: skip
        bar.addWidget(self.runStatusLabel, 1)
        bar.addWidget(self.addToQueueButton)
        bar.addWidget(self.runButton)
        lay.addLayout(bar)

        self.trainingPanel = TrainingPanel()
        self.results_area = ResultsArea(self.trainingPanel)
        for name in CENTRE:
            setattr(self, name, getattr(self.results_area, name))
        for name in TRAINING:
            setattr(self, name, getattr(self.trainingPanel, name))
        self.queuePanel = QueuePanel()
        self.results_area.tabs.addTab(self.queuePanel, "Queue")
        self.exportAdapterButton.clicked.connect(lambda: self.export_adapter())
        self.exportChartsButton.clicked.connect(lambda: self.export_charts())
        self.exportCsvButton.clicked.connect(lambda: self.export_csv())

        # The form is a dock on the left that runs the window's full height (the bottom-left corner
        # belongs to the left area), so the progress and log dock sits under the charts only and
        # the form fits without scrolling on a 1000-pixel-high screen.
        self.formDock = QDockWidget("Run settings", self)
        self.formDock.setObjectName("formDock")
        self.formDock.setWidget(left)
        self.formDock.setTitleBarWidget(QWidget())  # no title bar: it is part of the window
        self.formDock.setFeatures(QDockWidget.DockWidgetFeature.NoDockWidgetFeatures)
        self.setCorner(Qt.Corner.BottomLeftCorner, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, self.formDock)
        self.setCentralWidget(self.results_area)

        self.progressPanel = ProgressPanel()
        self.progressBar = self.progressPanel.progressBar
        self.cancelButton = self.progressPanel.cancelButton
        self.logView = self.progressPanel.logView
        self.cancelButton.clicked.connect(self.cancel_run)
        self.progressDock = QDockWidget("Progress and log", self)
        self.progressDock.setObjectName("progressDock")
        self.progressDock.setWidget(self.progressPanel)
        self.progressDock.setFeatures(
            QDockWidget.DockWidgetFeature.DockWidgetMovable | QDockWidget.DockWidgetFeature.DockWidgetFloatable
        )
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.progressDock)
        self.resizeDocks([self.progressDock], [190], Qt.Orientation.Vertical)
        self.resizeDocks([self.formDock], [470], Qt.Orientation.Horizontal)
        self.statusBar().showMessage("Loading the engine (torch, transformers)…")

    def _apply_state(self, state: AppState) -> None:
        """Enable what the state allows; the line beside Run says what is going on."""
        for action, names in ENABLES:
            on = state.enabled(action)
            for name in names:
                getattr(self, name).setEnabled(on)
        self.trainingPanel.set_inputs_enabled(state.enabled(Action.EDIT_TRAINING))
        text = state.run_status()
        key, reason = state.first_blocker() if state.checks is Checks.FAILED else ("", "")
        self.runStatusLabel.setText(f'<a href="{key}">{escape(text)}</a>' if key else escape(text))
        self.runStatusLabel.setToolTip(reason)

    def _on_task_started(self, handle: Any) -> None:
        if handle.task.name == "init":
            self.runStarted.emit(handle)

    # ================================================================== the parts' public faces
    def start_run(self) -> None:
        self.init_run.start()

    def cancel_run(self) -> None:
        if self.state.evaluating:
            self.history.cancel_eval()
        else:
            self.init_run.cancel()

    def request_check(self) -> None:
        """Check the form's config now (off the GUI thread); `checksFinished` reports it."""
        self.checks.request()

    def run_blockers(self) -> dict[str, str]:
        """Why Run is disabled: field -> reason (empty when Run is enabled)."""
        return self.state.blockers()

    def export_adapter(self, dest: str | None = None) -> str | None:
        return self.exports.export_adapter(dest)

    def export_merged(self, dest: str | None = None) -> str | None:
        return self.exports.export_merged(dest)

    def export_gguf(self, dest: str | None = None, gguf_type: str | None = None) -> str | None:
        return self.exports.export_gguf(dest, gguf_type)

    def export_charts(self, folder: str | None = None) -> list[str]:
        return self.exports.export_charts(folder)

    def export_csv(self, path: str | None = None) -> str | None:
        return self.exports.export_csv(path)

    def export_run(self, dest: str | None = None) -> str | None:
        return self.exports.export_run(dest)

    def launch_training(self) -> bool:
        return self.training_control.launch()

    def stop_training(self) -> None:
        self.training_control.stop()

    def resume_training(self) -> bool:
        return self.training_control.resume()

    def set_log_scale(self, on: bool) -> None:
        self.results_area.set_log_scale(on)

    # the state and data of the parts, as the window's (read-only)
    running = property(lambda self: self.state.running)
    training_active = property(lambda self: self.state.training)
    exporting = property(lambda self: self.state.exporting is not None)
    report = property(lambda self: self.state.report)
    engine_ready = property(lambda self: self.checks.engine_ready)
    session = property(lambda self: self.results_area.session)
    results = property(lambda self: self.results_area.results)
    displayed = property(lambda self: self.results_area.displayed)
    tracker = property(lambda self: self.init_run.tracker)
    training = property(lambda self: self.training_control.training)
    training_env = property(lambda self: self.training_control.env)
    train_process = property(lambda self: self.training_control.process)
    train_run_dir = property(lambda self: self.training_control.run_dir)
    recent_models = property(lambda self: self.prefs.recent_models)
    recent_calibration = property(lambda self: self.prefs.recent_calibration)

    # ================================================================== configs
    def default_config(self) -> Any:
        from quailora_core.config import DEMO_MODEL, RunConfig

        config = RunConfig()
        config.model.path = DEMO_MODEL  # the core has no default model; the app proposes the demo
        config.output = next_free_output(str(Path(default_output_root()) / "adapter"))
        return config

    def use_demo(self) -> None:
        """Preselect the demo model and the built-in text with settings that run in seconds."""
        from quailora_core.config import DEMO_CALIBRATION, DEMO_MODEL

        config = self.form.to_config()
        config.model.path, config.calibration.source = DEMO_MODEL, DEMO_CALIBRATION
        config.calibration.text_column = "text"
        config.calibration.samples, config.calibration.seq_len, config.calibration.heldout_samples = 32, 128, 8
        config.lora.targets = ["all-linear"]
        if not config.output or not is_free_output(config.output):
            config.output = next_free_output(config.output or str(Path(default_output_root()) / "demo-adapter"))
        self.form.set_config(config)
        self.log("Demo selected: the small model that ships with the app and the built-in sample text.")

    # ================================================================== run files
    def open_run(self, path: str | None = None) -> bool:
        if not self.state.enabled(Action.OPEN_RUN):
            return False
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Open a run file", self.prefs.last_dir(), "Run files (*.toml)")
            if not path:
                return False
        from quailora_core.config import RunConfig
        from quailora_core.errors import InputError

        try:
            config = RunConfig.load(path)
        except InputError as exc:
            self.keep_dialog(show_input_error(self, exc, "Could not open the run file"))
            return False
        self.prefs.remember_dir(str(Path(path).parent))
        self.form.set_config(config)
        self.training_control.show_settings(config)
        self.setWindowTitle(f"QuAILoRA Studio – {Path(path).name}")
        self.log(f"Opened run file {path}")
        return True

    def save_run(self, path: str | None = None) -> str | None:
        if path is None:
            start = str(Path(self.prefs.last_dir()) / "run.toml")
            path, _ = QFileDialog.getSaveFileName(self, "Save the run", start, "Run files (*.toml)")
            if not path:
                return None
        if not path.endswith(".toml"):
            path += ".toml"
        try:
            self.training_control.run_config(self.config_to_save()).save(path)
        except OSError as exc:
            self.keep_dialog(show_input_error(self, exc, "Could not save the run file"))
            return None
        self.prefs.remember_dir(str(Path(path).parent))
        self.setWindowTitle(f"QuAILoRA Studio – {Path(path).name}")
        self.log(f"Run saved to {path}")
        return path

    def config_to_save(self) -> Any:
        """What Save run writes: the form's settings, with the Training tab's; right after a run
        finished, the form already proposes the *next* free output folder, so while the form
        still holds the shown run's settings, the run saved is that finished run (its folder,
        which `quailora train` on the saved file trains), not the next one."""
        config = self.form.to_config()
        shown = self.results_area.displayed
        if shown is not None:
            as_shown = copy.deepcopy(config)
            as_shown.output, as_shown.overwrite = shown.config.output, shown.config.overwrite
            a, b = as_shown.to_dict(), shown.config.to_dict()
            a.pop("train", None), b.pop("train", None)
            if a == b:
                config = as_shown
        return config

    # ================================================================== drag and drop
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802
        urls = event.mimeData().urls()
        if urls and urls[0].isLocalFile() and classify_path(urls[0].toLocalFile()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802
        urls = event.mimeData().urls()
        if urls and urls[0].isLocalFile() and self.drop_path(urls[0].toLocalFile()):
            event.acceptProposedAction()

    def drop_path(self, path: str) -> str | None:
        """What a drop does: a model folder, calibration data or a run file; returns the kind."""
        kind = classify_path(path)
        allowed = Action.OPEN_RUN if kind == "run" else Action.DROP_INPUT
        if kind is None or not self.state.enabled(allowed):
            return None
        if kind == "run":
            self.open_run(path)
        elif kind == "model":
            self.form.choose_model(model_path_for(path))
        else:
            self.form.choose_calibration(path)
        return kind

    # ================================================================== log, recents, settings
    def log(self, message: str, level: str = "info") -> None:
        self.progressPanel.log(message, level)

    def keep_dialog(self, dialog: QWidget) -> None:
        """A non-modal dialog the window closes when it shuts down."""
        self._dialogs.append(dialog)

    def remember_model(self, path: str) -> None:
        if self.prefs.remember_model(path):
            self.form.set_recent(self.recent_models.items, self.recent_calibration.items)

    def remember_calibration(self, source: str) -> None:
        if self.prefs.remember_calibration(source):
            self.form.set_recent(self.recent_models.items, self.recent_calibration.items)

    def save_settings(self) -> None:
        self.prefs.save_window(self, self.training_control.run_config(self.form.to_config()))

    # ================================================================== closing
    def about(self) -> None:
        from .. import __version__

        QMessageBox.about(
            self,
            "About QuAILoRA Studio",
            f"<b>QuAILoRA Studio {__version__}</b><br>Quantization-aware initialization of LoRA adapters "
            "(Lawton et al., arXiv 2410.14713), with live per-layer charts.",
        )

    def shutdown(self, wait_ms: int = 30_000) -> None:
        """Cancel a run, stop the training and the worker threads, save the settings (idempotent)."""
        if self._shut_down:
            return
        self._shut_down = True
        self.checks.stop()
        self.init_run.stop()
        self.results_area.stop()
        self.save_settings()
        self.state.close()
        self.training_control.shutdown(wait_ms)
        self.queue_control.shutdown(wait_ms)
        self.tasks.shutdown(wait_ms)
        for dialog in self._dialogs:
            dialog.close()

    def close_on_signal(self, name: str) -> None:
        """SIGINT / SIGTERM (app.install_quit_signals): close as File > Quit does, without its
        questions: a run is cancelled, a training child stopped (it saves a checkpoint) and
        waited for before the app exits, never left running."""
        self.log(f"{name} received: closing (a training run is stopped and waited for).")
        self._ask_on_close = False
        self.close()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        questions = (
            (self.state.training, "Stop the training?", "Training is in progress. Stop it (a checkpoint is saved; "
             "Resume continues it) and close the window?"),
            (self.state.running, "Cancel the run?", "A run is in progress. Cancel it and close the window? "
             "Nothing of it will be written."),
            (self.queue_control.running(), "Stop the queue?", "The queue is running. Stop it (its running job is "
             "cancelled; the other jobs stay queued) and close the window?"),
        )  # fmt: skip
        for asked, title, text in questions:
            if asked and not self._shut_down and self._ask_on_close:
                if QMessageBox.question(self, title, text) != QMessageBox.StandardButton.Yes:
                    event.ignore()
                    return
        self.shutdown()
        event.accept()
