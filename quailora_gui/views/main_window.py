"""The main window: run form on the left, live charts in the centre, progress and log below.

Threads: the engine runs in an `InitWorker` moved to its own QThread per run; the cheap
form checks (model summary, data preview, validation, estimate) run in a `CheckWorker`
in a long-lived QThread. Both report through signals with queued connections to slots
of this window, so the GUI thread never waits on them.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QObject, Qt, QThread, QTimer, Signal, Slot
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDockWidget,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..controllers import checks
from ..controllers.formatting import fmt_duration, fmt_err, fmt_pct
from ..controllers.paths import RecentList, classify_path, is_free_output, model_path_for, next_free_output
from ..controllers.progress import ProgressTracker
from ..controllers.results import RunResults
from ..controllers.session import FinishedRun, Session
from .charts import HeatMapView, LayerErrorChart
from .common import app_icon, named, open_settings, role_label, shrinkable
from .dialogs import ExportDialog, show_failure, show_input_error
from .form_view import RunForm
from .panels import ComparePanel, ProgressPanel
from .table import ResultsTable
from .training_view import TrainingPanel, TrainingProcess
from .workers import CallWorker, CheckWorker, InitWorker

CHECK_DEBOUNCE_MS = 250
REFRESH_MS = 150  # charts redraw at most this often while layers stream in


def default_output_root() -> str:
    return os.environ.get("QUAILORA_GUI_OUTPUT_ROOT") or str(Path.home() / "QuAILoRA")


class MainWindow(QMainWindow):
    """QuAILoRA Studio's window. Tests wait on its signals and drive its named widgets."""

    runStarted = Signal(object)  # the InitWorker, before its thread starts
    layerReceived = Signal(object)  # each LayerResult, after the charts were updated
    runFinished = Signal(object)  # InitResult
    runFailed = Signal(object)  # quailora_core.events.Failed
    runCancelled = Signal()
    runEnded = Signal(str)  # "finished" | "failed" | "cancelled", after the specific signal
    checksFinished = Signal(object)  # CheckReport of the current form
    engineReady = Signal()
    exported = Signal(object)  # list of (what, path) written
    trainingStarted = Signal(str)  # the run folder the child process trains in
    trainingStep = Signal(object)  # each TrainStep, after the charts were updated
    trainingFinished = Signal(object)  # controllers.training.Outcome
    trainingFailed = Signal(object)  # Outcome (message, hint, details: the cause)
    trainingStopped = Signal(object)  # Outcome

    _checkRequested = Signal(object, int)
    _warmUpRequested = Signal()

    def __init__(
        self,
        config: Any | None = None,
        engine: Callable[..., Any] | None = None,
        restore_settings: bool = True,
    ) -> None:
        super().__init__()
        self.setObjectName("mainWindow")
        self.setWindowTitle("QuAILoRA Studio")
        self.setWindowIcon(app_icon())
        self.setAcceptDrops(True)
        self.resize(1480, 920)

        self._engine = engine
        self.settings = open_settings()
        self.session = Session()
        self.results = RunResults()
        self.displayed: FinishedRun | None = None  # finished run the charts show
        self.tracker = ProgressTracker()
        self.report: checks.CheckReport | None = None
        self.engine_ready = False
        self.running = False
        self.worker: InitWorker | None = None
        self._run_thread: QThread | None = None
        self._run_threads: list[tuple[QThread, QObject]] = []  # every run thread not yet deleted
        self._run_config: Any = None
        self._generation = 0
        self._dialogs: list[QWidget] = []
        self._shut_down = False
        self.recent_models = RecentList(self._settings_list("recent/models"))
        self.recent_calibration = RecentList(self._settings_list("recent/calibration"))

        self._build_ui()
        self._build_menus()
        self._start_checker()

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(CHECK_DEBOUNCE_MS)
        self._debounce.timeout.connect(self.request_check)
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(REFRESH_MS)
        self._refresh_timer.timeout.connect(self._refresh_charts)
        self._clock = QTimer(self)
        self._clock.setInterval(500)
        self._clock.timeout.connect(self._update_progress)
        self._train_clock = QTimer(self)
        self._train_clock.setInterval(1000)
        self._train_clock.timeout.connect(self._update_training_progress)

        self.form.changed.connect(self._on_form_changed)
        self.form.modelChosen.connect(self._remember_model)
        self.form.calibrationChosen.connect(self._remember_calibration)
        self.form.set_recent(self.recent_models.items, self.recent_calibration.items)

        if restore_settings:
            self._restore_geometry()
        if config is None and restore_settings:
            config = self._last_config()
        if config is None:
            config = self.default_config()
        self.form.set_config(config)
        self._update_run_enabled()
        self._warmUpRequested.emit()

    # ================================================================== construction
    def _build_ui(self) -> None:
        self.form = RunForm()
        self.runButton = named(QPushButton("Run"), "runButton")
        self.runButton.setEnabled(False)
        self.runButton.clicked.connect(self.start_run)
        self.runStatusLabel = role_label("Checking the settings…", "hint", "runStatusLabel")
        shrinkable(self.runStatusLabel)
        left = QWidget()
        left.setObjectName("leftPanel")
        left.setMinimumWidth(340)
        lay = QVBoxLayout(left)
        lay.setContentsMargins(0, 0, 0, 6)
        lay.setSpacing(4)
        lay.addWidget(self.form, 1)
        bar = QHBoxLayout()
        bar.setContentsMargins(10, 0, 10, 0)
        bar.addWidget(self.runStatusLabel, 1)
        bar.addWidget(self.runButton)
        lay.addLayout(bar)

        # chart toolbar
        self.logScaleCheck = named(QCheckBox("Log scale"), "logScaleCheck")
        self.logScaleCheck.toggled.connect(self.set_log_scale)
        self.compareCombo = named(QComboBox(), "compareCombo")
        self.compareCombo.addItem("None", 0)
        self.compareCombo.setMinimumWidth(150)
        self.compareCombo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.compareCombo.currentIndexChanged.connect(self._on_compare_changed)
        self.exportAdapterButton = named(QPushButton("Export adapter…"), "exportAdapterButton")
        self.exportAdapterButton.clicked.connect(lambda: self.export_adapter())
        self.exportChartsButton = named(QPushButton("Charts PNG…"), "exportChartsButton")
        self.exportChartsButton.clicked.connect(lambda: self.export_charts())
        self.exportCsvButton = named(QPushButton("Results CSV…"), "exportCsvButton")
        self.exportCsvButton.clicked.connect(lambda: self.export_csv())
        for b in (self.exportAdapterButton, self.exportChartsButton, self.exportCsvButton):
            b.setEnabled(False)
        self.summaryLabel = role_label("", "hint", "summaryLabel")
        self.summaryLabel.setWordWrap(False)
        shrinkable(self.summaryLabel)
        tools = QHBoxLayout()
        tools.setContentsMargins(6, 2, 6, 2)
        tools.addWidget(QLabel("Compare with"))
        tools.addWidget(self.compareCombo)
        tools.addWidget(self.logScaleCheck)
        tools.addStretch(1)
        tools.addWidget(self.exportChartsButton)
        tools.addWidget(self.exportCsvButton)
        tools.addWidget(self.exportAdapterButton)

        self.layerErrorChart = LayerErrorChart()
        self.heatMap = HeatMapView()
        self.resultsTableWidget = ResultsTable()
        self.resultsTable = self.resultsTableWidget.view
        self.comparePanel = ComparePanel()
        self._build_training()
        self.tabs = QTabWidget()
        self.tabs.setObjectName("chartTabs")
        self.tabs.addTab(self.layerErrorChart, "Layer errors")
        self.tabs.addTab(self.heatMap, "Heat map")
        self.tabs.addTab(self.resultsTableWidget, "Table")
        self.tabs.addTab(self.comparePanel, "Compare")
        self.tabs.addTab(self.trainingPanel, "Training")
        self._stale_charts: set[QWidget] = set()
        self.tabs.currentChanged.connect(self._on_tab_changed)
        self.logScaleCheck.setChecked(True)  # errors after initialization are often 10-100x smaller

        centre = QWidget()
        centre.setObjectName("centrePanel")
        c = QVBoxLayout(centre)
        c.setContentsMargins(0, 4, 6, 0)
        c.setSpacing(4)
        c.addLayout(tools)
        c.addWidget(self.tabs, 1)
        c.addWidget(self.summaryLabel)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setObjectName("mainSplitter")
        self.splitter.addWidget(left)
        self.splitter.addWidget(centre)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([470, 1010])
        self.setCentralWidget(self.splitter)

        self.progressPanel = ProgressPanel()
        self.progressBar = self.progressPanel.progressBar
        self.cancelButton = self.progressPanel.cancelButton
        self.logView = self.progressPanel.logView
        self.cancelButton.clicked.connect(self.cancel_run)
        self.progressDock = QDockWidget("Progress and log", self)
        self.progressDock.setObjectName("progressDock")
        self.progressDock.setWidget(self.progressPanel)
        self.progressDock.setFeatures(
            QDockWidget.DockWidgetFeature.DockWidgetMovable
            | QDockWidget.DockWidgetFeature.DockWidgetFloatable
        )
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.progressDock)
        self.resizeDocks([self.progressDock], [190], Qt.Orientation.Vertical)
        self.statusBar().showMessage("Loading the engine (torch, transformers)…")

    def _build_training(self) -> None:
        from ..controllers.training import TrainingState

        self.trainingPanel = p = TrainingPanel()
        self.lossChart = p.lossChart
        self.lrChart = p.lrChart
        self.launchTrainingButton = p.launchTrainingButton
        self.exportRunButton = p.exportRunButton
        self.stopTrainingButton = p.stopTrainingButton
        self.resumeTrainingButton = p.resumeTrainingButton
        self.training = TrainingState()
        self.training_active = False
        self.exporting = False  # a run folder is being written (in a CallWorker thread)
        self._export_then: tuple[Callable[[Path], None], str] = (lambda run_dir: None, "")
        self.train_run_dir: str | None = None  # the run folder of the last launch (Resume trains it)
        # added to the child's environment (tests pin OMP_NUM_THREADS=1)
        self.training_env: dict[str, str] = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.train_process = TrainingProcess(self)
        self.train_process.line.connect(self._on_train_line)
        self.train_process.errorLine.connect(self._on_train_stderr)
        self.train_process.ended.connect(self._on_train_ended)
        self.train_process.startFailed.connect(self._on_train_start_failed)
        p.exportRunButton.clicked.connect(lambda: self.export_run())
        p.launchTrainingButton.clicked.connect(lambda: self.launch_training())
        p.stopTrainingButton.clicked.connect(self.stop_training)
        p.resumeTrainingButton.clicked.connect(self.resume_training)
        p.trainOutputEdit.textEdited.connect(lambda _text: self._sync_training_actions())

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self.openRunAction = self._action(
            file_menu, "&Open run…", "openRunAction", QKeySequence.StandardKey.Open, lambda: self.open_run()
        )
        self.saveRunAction = self._action(
            file_menu, "&Save run…", "saveRunAction", QKeySequence.StandardKey.Save, lambda: self.save_run()
        )
        file_menu.addSeparator()
        self.exportAdapterAction = self._action(
            file_menu, "Export &adapter…", "exportAdapterAction", None, lambda: self.export_adapter()
        )
        self.exportChartsAction = self._action(
            file_menu, "Export &charts as PNG…", "exportChartsAction", None, lambda: self.export_charts()
        )
        self.exportCsvAction = self._action(
            file_menu, "Export results as C&SV…", "exportCsvAction", None, lambda: self.export_csv()
        )
        file_menu.addSeparator()
        self._action(file_menu, "&Quit", "quitAction", QKeySequence.StandardKey.Quit, self.close)

        run_menu = self.menuBar().addMenu("&Run")
        self.runAction = self._action(run_menu, "&Run", "runAction", QKeySequence("Ctrl+R"), self.start_run)
        self.cancelAction = self._action(
            run_menu, "&Cancel", "cancelAction", QKeySequence("Esc"), self.cancel_run
        )
        run_menu.addSeparator()
        self._action(run_menu, "Use the &demo model", "demoAction", None, self.use_demo)

        view_menu = self.menuBar().addMenu("&View")
        self.logScaleAction = QAction("&Log scale", self)
        self.logScaleAction.setCheckable(True)
        self.logScaleAction.toggled.connect(self.logScaleCheck.setChecked)
        self.logScaleCheck.toggled.connect(self.logScaleAction.setChecked)
        view_menu.addAction(self.logScaleAction)
        view_menu.addAction(self.progressDock.toggleViewAction())

        help_menu = self.menuBar().addMenu("&Help")
        self._action(help_menu, "&About QuAILoRA Studio", "aboutAction", None, self._about)
        self._sync_export_actions()

    def _action(self, menu: Any, text: str, name: str, shortcut: Any, slot: Callable[[], Any]) -> QAction:
        action = QAction(text, self)
        action.setObjectName(name)
        if shortcut is not None:
            action.setShortcut(shortcut)
        action.triggered.connect(lambda _=False: slot())
        menu.addAction(action)
        return action

    def _start_checker(self) -> None:
        self._check_thread = QThread(self)
        self._check_thread.setObjectName("checkThread")
        self.check_worker = CheckWorker()
        self.check_worker.moveToThread(self._check_thread)
        self._checkRequested.connect(self.check_worker.check, Qt.ConnectionType.QueuedConnection)
        self._warmUpRequested.connect(self.check_worker.warm_up, Qt.ConnectionType.QueuedConnection)
        self.check_worker.checked.connect(self._on_checked, Qt.ConnectionType.QueuedConnection)
        self.check_worker.warmed.connect(self._on_warmed, Qt.ConnectionType.QueuedConnection)
        self.check_worker.devices.connect(self._on_devices, Qt.ConnectionType.QueuedConnection)
        self._check_thread.start()

    # ================================================================== configs
    def default_config(self) -> Any:
        from quailora_core.config import RunConfig

        config = RunConfig()
        config.output = next_free_output(str(Path(default_output_root()) / "adapter"))
        return config

    def use_demo(self) -> None:
        """Preselect the demo model and the built-in text with settings that run in seconds."""
        from quailora_core.config import DEMO_CALIBRATION, DEMO_MODEL

        config = self.form.to_config()
        config.model.path = DEMO_MODEL
        config.calibration.source = DEMO_CALIBRATION
        config.calibration.text_column = "text"
        config.calibration.samples = 32
        config.calibration.seq_len = 128
        config.calibration.heldout_samples = 8
        config.lora.targets = ["all-linear"]
        if not config.output or not is_free_output(config.output):
            config.output = next_free_output(
                config.output or str(Path(default_output_root()) / "demo-adapter")
            )
        self.form.set_config(config)
        self.log("Demo selected: the small model that ships with the app and the built-in sample text.")

    # ================================================================== checks
    def _on_form_changed(self) -> None:
        self.report = None
        self._update_run_enabled()
        self._debounce.start()

    @Slot()
    def request_check(self) -> None:
        """Check the form's config now (off the GUI thread); `checksFinished` reports it."""
        if self._shut_down:
            return
        self._debounce.stop()
        self._generation += 1
        self.check_worker.note_request(self._generation)
        self._checkRequested.emit(self.form.to_config(), self._generation)

    @Slot(object)
    def _on_checked(self, report: checks.CheckReport) -> None:
        if report.generation != self._generation or self._shut_down:
            return  # the form changed since
        self.report = report
        self.form.apply_report(report)
        self._update_run_enabled()
        self.checksFinished.emit(report)

    @Slot(str)
    def _on_warmed(self, error: str) -> None:
        if error:
            self.statusBar().showMessage(f"The engine could not be loaded: {error}")
            self.log(f"The engine could not be loaded: {error}", "error")
            return
        self.engine_ready = True
        # torch, transformers and peft leave ~0.5 M long-lived objects: a full garbage
        # collection scanning them holds the GIL for 0.1-0.5 s, from whichever thread
        # triggers it, and would freeze the window mid-run. Exempt them from the scans.
        gc.freeze()
        self.statusBar().showMessage("Engine ready.", 5000)
        self.engineReady.emit()

    @Slot(object)
    def _on_devices(self, devices: list[tuple[str, str]]) -> None:
        self.form.set_devices(devices)

    def _update_run_enabled(self) -> None:
        ok = not self.running and not self.training_active and self.report is not None and self.report.ok
        self.runButton.setEnabled(ok)
        self.runAction.setEnabled(ok)
        if self.running:
            text = "Running…"
        elif self.training_active:
            text = "Training is running (see the Training tab)."
        elif self.report is None:
            text = "Checking the settings…"
        elif self.report.ok:
            text = "Ready to run."
        else:
            n = len(self.report.errors)
            text = (
                "Fix the problem marked in red above."
                if n == 1
                else f"Fix the {n} problems marked in red above."
            )
        self.runStatusLabel.setText(text)

    def run_blockers(self) -> dict[str, str]:
        """Why Run is disabled: field -> reason (empty when Run is enabled)."""
        if self.report is None:
            return {"pending": "The settings are being checked."}
        return dict(self.report.errors)

    # ================================================================== running
    @Slot()
    def start_run(self) -> None:
        if self.running or self.training_active or self.report is None or not self.report.ok:
            return
        config = self.form.to_config()
        self._run_config = config
        self._save_last_config(config)
        self._remember_model(config.model.path)
        self._remember_calibration(config.calibration.source)
        self.running = True
        self.form.setEnabled(False)
        self.cancelButton.setEnabled(True)
        self.cancelAction.setEnabled(True)
        self._update_run_enabled()
        self.results = RunResults()
        self.displayed = None
        self.resultsTableWidget.model.set_layers([])
        self.layerErrorChart.set_results(self.results)
        self.heatMap.set_results(self.results)
        self.summaryLabel.setText("")
        self._sync_export_actions()
        self.tracker.reset()
        self.progressPanel.set_busy("Starting…")
        self.progressPanel.etaLabel.setText("")
        self.log(
            f"Run started: {config.init.method}, rank {config.lora.rank}, {config.quantization.bits}-bit, "
            f"model {config.model.path}, writing to {config.output}"
        )

        thread = QThread(self)
        thread.setObjectName("runThread")
        worker = InitWorker(config, self._engine)
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        queued = Qt.ConnectionType.QueuedConnection
        worker.event.connect(self._on_event, queued)
        worker.succeeded.connect(self._on_succeeded, queued)
        worker.failed.connect(self._on_failed, queued)
        worker.cancelled.connect(self._on_cancelled, queued)
        for signal in (worker.succeeded, worker.failed, worker.cancelled):
            signal.connect(thread.quit, queued)
        thread.finished.connect(self._on_thread_finished, queued)
        self.worker = worker
        self._run_thread = thread
        self._run_threads.append((thread, worker))
        self._clock.start()
        self.runStarted.emit(worker)
        thread.start()

    @Slot()
    def cancel_run(self) -> None:
        if not self.running or self.worker is None:
            return
        self.worker.cancel()
        self.cancelButton.setEnabled(False)
        self.cancelAction.setEnabled(False)
        self.progressPanel.currentLayerLabel.setText("Cancelling after the current layer…")
        self.log("Cancel requested: the engine stops after the current layer.", "warning")

    @Slot(object)
    def _on_event(self, event: Any) -> None:
        if not self.running:
            return  # after shutdown
        kind = type(event).__name__
        self.tracker.on_event(event)
        if kind == "LayerResult":
            self.results.add(event)
            self.resultsTableWidget.model.add_layer(event)
            if not self._refresh_timer.isActive():
                self._refresh_timer.start()
            self._update_progress()
            self.layerReceived.emit(event)
        elif kind == "Stage":
            self.log(f"Stage: {event.name}" + (f" ({event.total} layers)" if event.total else ""))
            if event.name == "calibrate" and event.total:
                summary = self.report.summary if self.report is not None else None
                self.layerErrorChart.expect_layers(event.total, getattr(summary, "n_blocks", 0))
            self._update_progress()
        elif kind == "Log":
            self.log(event.message, event.level)
        elif kind == "Finished":
            self.log(f"Adapter written to {event.output_dir}")
        elif kind == "Failed":
            self.log(f"{event.message} {event.hint}", "error")

    def _update_progress(self) -> None:
        if not self.running:
            return
        if self.tracker.busy:
            self.progressPanel.set_busy(self.tracker.status_text())
            self.progressPanel.etaLabel.setText(self.tracker.eta_text())
        else:
            self.progressPanel.set_progress(
                self.tracker.done, self.tracker.total, self.tracker.status_text(), self.tracker.eta_text()
            )

    def _refresh_charts(self, everything: bool = False) -> None:
        """Redraw the chart on the visible tab (all of them with `everything`); the
        others are redrawn when their tab is shown."""
        self._refresh_timer.stop()
        self._stale_charts.update((self.layerErrorChart, self.heatMap))
        for chart in list(self._stale_charts):
            if everything or chart is self.tabs.currentWidget():
                chart.refresh()
                self._stale_charts.discard(chart)
        self._show_summary_line()

    def _on_tab_changed(self, _index: int) -> None:
        widget = self.tabs.currentWidget()
        if widget in self._stale_charts:
            self._stale_charts.discard(widget)
            widget.refresh()

    def _end_run(self) -> None:
        self._refresh_charts(everything=True)
        self.running = False
        self._clock.stop()
        self.form.setEnabled(True)
        self.cancelButton.setEnabled(False)
        self.cancelAction.setEnabled(False)
        self._sync_export_actions()
        self._update_run_enabled()

    @Slot(object)
    def _on_succeeded(self, result: Any) -> None:
        if not self.running:
            return
        config = self._run_config
        run = self.session.add(config, result.layers, result.summary, result.output_dir)
        self.displayed = run
        self._show_training_source(run)
        self._end_run()
        self.compareCombo.addItem(run.name, run.number)
        self._on_compare_changed()
        total = len(result.layers)
        checked = result.summary.get("verified_layers") or 0
        check = f" Self-check passed on {checked} layers." if checked else " Self-check was off."
        self.progressPanel.set_idle(
            f"Finished {run.name}: {total} layers in {fmt_duration(self.tracker.elapsed())}.{check}", total, total
        )
        self.progressPanel.etaLabel.setText("")
        self.log(f"Finished {run.name}: adapter in {result.output_dir}")
        # The next run needs a free folder: move on to adapter-2, -3, ...
        if config.output and not is_free_output(config.output) and not config.overwrite:
            nxt = next_free_output(config.output)
            self.form.outputPathEdit.setText(nxt)
            self.log(f"The next run will write to {nxt}")
        self.request_check()
        self.runFinished.emit(result)
        self.runEnded.emit("finished")

    @Slot(object)
    def _on_failed(self, failed: Any) -> None:
        if not self.running:
            return
        self._end_run()
        self.progressPanel.set_idle(f"Failed: {failed.message}")
        self.log(f"{failed.message} {failed.hint}".strip(), "error")
        self._dialogs.append(show_failure(self, failed))
        self.request_check()
        self.runFailed.emit(failed)
        self.runEnded.emit("failed")

    @Slot()
    def _on_cancelled(self) -> None:
        if not self.running:
            return
        self._end_run()
        self.progressPanel.set_idle(f"Cancelled after {len(self.results)} layers; nothing was written.")
        self.progressPanel.etaLabel.setText("")
        self.log("Run cancelled; nothing was written to disk.", "warning")
        self.request_check()
        self.runCancelled.emit()
        self.runEnded.emit("cancelled")

    @Slot()
    def _on_thread_finished(self) -> None:
        """Delete the threads (and their workers) that have finished."""
        for thread, worker in list(self._run_threads):
            if thread.isFinished():
                self._run_threads.remove((thread, worker))
                if thread is self._run_thread:
                    self._run_thread = None
                    self.worker = None
                worker.deleteLater()
                thread.deleteLater()

    # ================================================================== charts, compare
    def set_log_scale(self, on: bool) -> None:
        self.layerErrorChart.set_log_scale(on)

    def _show_summary_line(self) -> None:
        """The core's summary of the layers so far, in one line under the charts."""
        if not len(self.results):
            self.summaryLabel.setText("")
            return
        s = self.results.summary()
        self.summaryLabel.setText(
            f"{len(self.results)} layers · mean calibrated error {fmt_err(s.get('mean_cal_err_before'))} → "
            f"<b>{fmt_err(s.get('mean_cal_err_after'))}</b> · {fmt_pct(s.get('mean_cal_improvement'))} of it "
            f"removed per layer on average · held-out {fmt_err(s.get('mean_heldout_err_before'))} → "
            f"<b>{fmt_err(s.get('mean_heldout_err_after'))}</b>"
        )

    def _on_compare_changed(self, *_: Any) -> None:
        number = self.compareCombo.currentData() or 0
        other = self.session.get(number) if number else None
        if other is not None and other is not self.displayed:
            self.layerErrorChart.set_compare(other.results, other.name)
        else:
            self.layerErrorChart.set_compare(None)
        shown = self.displayed
        self.comparePanel.show_runs(
            shown.name if shown else "This run",
            shown.summary if shown else None,
            other.name if other else "Compared run",
            other.summary if other else None,
        )

    # ================================================================== export
    def _sync_export_actions(self) -> None:
        has_adapter = self.displayed is not None and not self.running and not self.exporting
        has_results = len(self.results) > 0 and not self.running
        self.exportAdapterButton.setEnabled(has_adapter)
        self.exportChartsButton.setEnabled(has_results)
        self.exportCsvButton.setEnabled(has_results)
        self._sync_training_actions()
        if hasattr(self, "exportAdapterAction"):
            self.exportAdapterAction.setEnabled(has_adapter)
            self.exportChartsAction.setEnabled(has_results)
            self.exportCsvAction.setEnabled(has_results)

    def _chosen_folder(self, dest: str | None, title: str) -> str | None:
        """`dest`, or the folder the user picks when it is None (None if they cancel); remembered
        as the next dialog's starting folder."""
        if dest is None:
            dest = QFileDialog.getExistingDirectory(self, title, self._last_dir()) or None
        if dest is not None:
            self._remember_dir(dest)
        return dest

    def export_adapter(self, dest: str | None = None) -> str | None:
        """Copy the shown run's adapter into `dest` (asked for when None) in a worker thread (a
        rank-64 adapter of a 70B model is ~1 GB); then show how to load it (`exported`).
        Returns the folder being written, or None."""
        run = self.displayed
        dest = self._chosen_folder(dest, "Export the adapter to") if run is not None and not self.exporting else None
        if dest is None:
            return None
        target = dest if is_free_output(dest) else str(Path(dest) / Path(run.output_dir).name)
        from quailora_core.adapter.writer import copy_adapter

        source = run.output_dir
        self._export_in_thread(lambda: copy_adapter(source, target), self._on_adapter_exported, "Export failed", target)
        return target

    def _on_adapter_exported(self, target: Path) -> None:
        from quailora_core.adapter.writer import loading_code

        written = [("Adapter", str(target))]
        self.log(f"Adapter exported to {target}")
        self._show_export_dialog(written, loading_code(target), str(target))

    def export_charts(self, folder: str | None = None) -> list[str]:
        """Save the layer-error chart and the heat map as PNG files in `folder`."""
        folder = self._chosen_folder(folder, "Save the charts in") if len(self.results) else None
        if folder is None:
            return []
        self._refresh_charts(everything=True)
        Path(folder).mkdir(parents=True, exist_ok=True)
        written = []
        for widget, name in ((self.layerErrorChart, "layer-errors.png"), (self.heatMap, "heat-map.png")):
            path = str(Path(folder) / name)
            if not self._grab(widget).save(path, "PNG"):
                self._dialogs.append(
                    show_input_error(self, OSError(f"Could not write {path}."), "Export failed")
                )
                return written
            written.append(path)
        self.log(f"Charts saved: {', '.join(written)}")
        self._show_export_dialog([("Chart", p) for p in written], "", folder)
        return written

    def _grab(self, widget: QWidget) -> Any:
        if not widget.isVisible():  # a background tab: lay it out at the size of the visible one
            widget.resize(self.tabs.currentWidget().size())
            widget.ensurePolished()
        return widget.grab()

    def export_csv(self, path: str | None = None) -> str | None:
        """Write the per-layer results (the core's CSV format) to `path`."""
        if not len(self.results):
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Save the per-layer results", str(Path(self._last_dir()) / "layers.csv"), "CSV (*.csv)"
            )
            if not path:
                return None
        self._remember_dir(str(Path(path).parent))
        from quailora_core.init.metrics import write_csv

        try:
            write_csv(self.results.layers, path)
        except OSError as exc:
            self._dialogs.append(show_input_error(self, exc, "Export failed"))
            return None
        self.log(f"Per-layer results saved to {path}")
        self._show_export_dialog([("Results", path)], "", str(Path(path).parent))
        return path

    def _show_export_dialog(self, written: list[tuple[str, str]], code: str, folder: str) -> None:
        dialog = ExportDialog(self, written, code, folder)
        dialog.open()
        self._dialogs.append(dialog)
        self.exported.emit(written)

    # ================================================================== training
    def _show_training_source(self, run: FinishedRun) -> None:
        """The finished run whose adapter Export run / Launch train; a free output folder for it."""
        from html import escape

        p = self.trainingPanel
        p.adapterLabel.setText(
            f"Trains the adapter of <b>{escape(run.name)}</b><br><code>{escape(run.output_dir)}</code>"
        )
        if run.config.train.data:
            p.set_settings(run.config.train)
        out = p.trainOutputEdit.text().strip()
        if not out or not is_free_output(out) or self.train_run_dir == out:
            p.trainOutputEdit.setText(next_free_output(run.output_dir + "-training"))
        self._sync_training_actions()

    def _sync_training_actions(self) -> None:
        if not hasattr(self, "trainingPanel"):
            return
        from ..controllers.training import has_checkpoint

        p = self.trainingPanel
        idle = not self.training_active and not self.running and not self.exporting
        has_run = self.displayed is not None
        p.exportRunButton.setEnabled(has_run and idle)
        p.launchTrainingButton.setEnabled(has_run and idle and bool(p.trainOutputEdit.text().strip()))
        p.stopTrainingButton.setEnabled(self.training_active and not self.train_process.stop_requested)
        p.resumeTrainingButton.setEnabled(idle and has_checkpoint(self.train_run_dir))
        p.set_inputs_enabled(not self.training_active)

    def _training_config(self) -> Any:
        from ..controllers.training import training_config

        run = self.displayed
        return training_config(run.config, run.output_dir, self.trainingPanel.settings())

    def export_run(self, dest: str | None = None) -> str | None:
        """Write the run folder (run.toml, adapter, data, launch.sh) for the shown run's adapter
        into `dest` (asked for when None), in a worker thread; then show where it went and how
        to start it (`exported`). Returns the folder being written, or None."""
        run = self.displayed
        dest = self._chosen_folder(dest, "Export the run to") if run is not None and not self.exporting else None
        if dest is None:
            return None
        target = (
            dest
            if is_free_output(dest)
            else next_free_output(str(Path(dest) / (Path(run.output_dir).name + "-run")))
        )
        self._export_run_in_thread(target, self._on_run_exported, "Export failed")
        return target

    def _on_run_exported(self, run_dir: Path) -> None:
        from ..controllers.training import launch_text

        written = [("Run folder", str(run_dir)), ("Launcher", str(run_dir / "launch.sh"))]
        self.log(f"Run exported to {run_dir}; start it with {run_dir / 'launch.sh'}")
        dialog = ExportDialog(
            self, written, launch_text(run_dir), str(run_dir), "Start it here or on a GPU machine with:",
            "The commands that train this run folder.",
        )  # fmt: skip
        dialog.open()
        self._dialogs.append(dialog)
        self.exported.emit(written)

    def launch_training(self) -> bool:
        """Export the run into the output folder (worker thread), then train it there in a
        child process. Returns whether the export started."""
        run = self.displayed
        if run is None or self.training_active or self.running or self.exporting:
            return False
        out = self.trainingPanel.trainOutputEdit.text().strip()
        self._export_run_in_thread(out, self._on_exported_for_training, "Cannot launch the training")
        return True

    def _on_exported_for_training(self, run_dir: Path) -> None:
        if self.running:  # an initialization was started while the folder was being copied
            self.log(f"Run exported to {run_dir}; not launched while an initialization runs.", "warning")
            return
        self.log(f"Run exported to {run_dir}")
        self.training.reset()
        self.trainingPanel.show_state(self.training)
        self._start_training(str(run_dir), resume=False)

    def _export_run_in_thread(self, target: str, on_done: Callable[[Path], None], failure_title: str) -> None:
        """quailora_core.train.export.export_run(<the shown run's training config>, target) in a
        worker thread; then `on_done(run_dir)` on the GUI thread, or an error dialog."""
        from quailora_core.train.export import export_run

        config = self._training_config()  # read from the widgets here, on the GUI thread
        self._export_in_thread(lambda: export_run(config, target), on_done, failure_title, target)

    def _export_in_thread(
        self, job: Callable[[], Path], on_done: Callable[[Path], None], failure_title: str, target: str
    ) -> None:
        """Run a Qt-free file job (copy an adapter, write a run folder) in a CallWorker thread,
        with the export actions disabled meanwhile; then `on_done(its result)` on the GUI
        thread, or an error dialog titled `failure_title`."""
        self.exporting = True
        self._export_then = (on_done, failure_title)
        self._sync_export_actions()
        self.log(f"Exporting to {target} …")
        thread = QThread(self)
        thread.setObjectName("exportThread")
        worker = CallWorker(job)
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        # bound methods of this window (a QObject of the GUI thread): Qt queues the calls there
        queued = Qt.ConnectionType.QueuedConnection
        worker.succeeded.connect(self._on_export_succeeded, queued)
        worker.failed.connect(self._on_export_failed, queued)
        for signal in (worker.succeeded, worker.failed):
            signal.connect(thread.quit, queued)
        thread.finished.connect(self._on_thread_finished, queued)
        self._run_threads.append((thread, worker))
        thread.start()

    def _export_finished(self) -> bool:
        """Re-enable the actions; False after shutdown (then nothing more is shown)."""
        self.exporting = False
        if self._shut_down:
            return False
        self._sync_export_actions()
        return True

    @Slot(object)
    def _on_export_succeeded(self, run_dir: Any) -> None:
        if self._export_finished():
            self._export_then[0](Path(run_dir))

    @Slot(object)
    def _on_export_failed(self, exc: Any) -> None:
        from quailora_core.errors import QuailoraError

        if not self._export_finished():
            return
        if not isinstance(exc, (QuailoraError, OSError)):
            exc = QuailoraError(f"The export failed: {checks.error_text(exc)}")
        self._dialogs.append(show_input_error(self, exc, self._export_then[1]))

    def resume_training(self) -> bool:
        """Continue the last launched run from its newest checkpoint (the step count goes on)."""
        from ..controllers.training import has_checkpoint

        if self.training_active or self.running or not has_checkpoint(self.train_run_dir):
            return False
        self._start_training(self.train_run_dir, resume=True)
        return True

    def _start_training(self, run_dir: str, resume: bool) -> None:
        import shlex

        from ..controllers.training import train_command

        settings = self.trainingPanel.settings()
        max_steps = settings["max_steps"] if resume and not settings["epochs"] else None
        command = train_command(run_dir, resume, max_steps)
        self.train_run_dir = run_dir
        self.training_active = True
        self.training.begin()
        self._sync_training_actions()
        self._update_run_enabled()
        self.form.setEnabled(False)
        self.progressPanel.set_busy("Starting the training process…")
        self.progressPanel.etaLabel.setText("")
        self.trainingPanel.trainStatusLabel.setText(f"Training in <code>{run_dir}</code>")
        self.log(("Resuming" if resume else "Training") + f": {shlex.join(command)}")
        self._train_clock.start()
        self.train_process.start(command, run_dir, self.training_env)
        if self.training_active:
            self.log(f"Training process {self.train_process.pid} started.")
            self.trainingStarted.emit(run_dir)

    @Slot()
    def stop_training(self) -> None:
        if not self.training_active or self.train_process.stop_requested:
            return
        self.train_process.stop()
        self._sync_training_actions()
        self.progressPanel.currentLayerLabel.setText("Stopping at the end of the current step…")
        self.log("Stop requested: the trainer saves a checkpoint at the end of the current step.", "warning")

    @Slot(str)
    def _on_train_line(self, line: str) -> None:
        from ..controllers.training import parse_line

        event = parse_line(line)
        if event is None:
            if line.strip():
                self.log(f"[train] {line}")
            return
        self.training.on_event(event)
        kind = type(event).__name__
        if kind == "TrainStep":
            self.trainingPanel.show_state(self.training)
            self._update_training_progress()
            self.trainingStep.emit(event)
        elif kind == "EvalResult":
            self.trainingPanel.show_state(self.training)
            self.log(
                f"Validation at step {event.step}: loss {event.loss:.4g}, perplexity {event.perplexity:.4g}"
            )
        elif kind == "Stage":
            if event.name == "export":
                self.progressPanel.currentLayerLabel.setText("Writing the trained adapter…")
        elif kind == "Log":
            self.log(event.message, event.level)
        elif kind == "Finished":
            self.log(f"Trained adapter written to {Path(event.output_dir) / 'adapter'}")
        elif kind == "Failed":
            self.log(f"{event.message} {event.hint}".strip(), "error")

    @Slot(str)
    def _on_train_stderr(self, line: str) -> None:
        self.training.on_stderr(line)
        if line.strip():
            self.log(f"[train] {line}")

    def _update_training_progress(self) -> None:
        if not self.training_active or self.train_process.stop_requested:
            return
        t = self.training
        if t.steps:
            self.progressPanel.set_progress(t.step, t.total_steps, t.status_text(), t.eta_text(), "steps")
        else:
            self.progressPanel.etaLabel.setText(t.eta_text())

    @Slot(int, bool)
    def _on_train_ended(self, code: int, crashed: bool) -> None:
        from ..controllers.training import TRAIN_OUTPUT, has_checkpoint

        if not self.training_active:
            return
        run_dir = self.train_run_dir or ""
        checkpoint = str(Path(run_dir) / TRAIN_OUTPUT) if has_checkpoint(run_dir) else ""
        outcome = self.training.outcome(code, crashed, self.train_process.stop_requested, checkpoint)
        self._end_training()
        t = self.training
        self.trainingPanel.trainStatusLabel.setText(f"{outcome.message} {outcome.hint}".strip())
        self.progressPanel.set_idle(outcome.message, t.step, t.total_steps, "steps")
        self.progressPanel.etaLabel.setText(f"elapsed {fmt_duration(t.elapsed())}")
        if outcome.kind == "finished":
            self.log(f"{outcome.message} Results in {Path(run_dir) / TRAIN_OUTPUT}")
            self.trainingFinished.emit(outcome)
        elif outcome.kind == "stopped":
            self.log(f"{outcome.message} {outcome.hint}", "warning")
            self.trainingStopped.emit(outcome)
        else:
            self.log(f"Training failed: {outcome.message} {outcome.hint}".strip(), "error")
            self._dialogs.append(show_failure(self, outcome, "Training failed"))
            self.trainingFailed.emit(outcome)

    @Slot(str)
    def _on_train_start_failed(self, error: str) -> None:
        if not self.training_active:
            return
        from ..controllers.training import Outcome

        self._end_training()
        outcome = Outcome("failed", f"The training process could not be started: {error}", "")
        self.progressPanel.set_idle(outcome.message)
        self.log(outcome.message, "error")
        self._dialogs.append(show_failure(self, outcome, "Training failed"))
        self.trainingFailed.emit(outcome)

    def _end_training(self) -> None:
        self.training_active = False
        self._train_clock.stop()
        self.form.setEnabled(True)
        self.trainingPanel.show_state(self.training)
        out = self.trainingPanel.trainOutputEdit.text().strip()
        if (
            out
            and not is_free_output(out)
            and Path(out).resolve() == Path(self.train_run_dir or "").resolve()
        ):
            self.trainingPanel.trainOutputEdit.setText(
                next_free_output(out)
            )  # the next Launch needs a free one
        self._sync_training_actions()
        self._update_run_enabled()

    # ================================================================== run files
    def open_run(self, path: str | None = None) -> bool:
        if path is None:
            path, _ = QFileDialog.getOpenFileName(
                self, "Open a run file", self._last_dir(), "Run files (*.toml)"
            )
            if not path:
                return False
        from quailora_core.config import RunConfig
        from quailora_core.errors import InputError

        try:
            config = RunConfig.load(path)
        except InputError as exc:
            self._dialogs.append(show_input_error(self, exc, "Could not open the run file"))
            return False
        self._remember_dir(str(Path(path).parent))
        self.form.set_config(config)
        self.setWindowTitle(f"QuAILoRA Studio – {Path(path).name}")
        self.log(f"Opened run file {path}")
        return True

    def save_run(self, path: str | None = None) -> str | None:
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Save the run", str(Path(self._last_dir()) / "run.toml"), "Run files (*.toml)"
            )
            if not path:
                return None
        if not path.endswith(".toml"):
            path += ".toml"
        try:
            self.form.to_config().save(path)
        except OSError as exc:
            self._dialogs.append(show_input_error(self, exc, "Could not save the run file"))
            return None
        self._remember_dir(str(Path(path).parent))
        self.setWindowTitle(f"QuAILoRA Studio – {Path(path).name}")
        self.log(f"Run saved to {path}")
        return path

    # ================================================================== drag and drop
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802
        urls = event.mimeData().urls()
        if urls and urls[0].isLocalFile() and classify_path(urls[0].toLocalFile()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802
        urls = event.mimeData().urls()
        if not urls or not urls[0].isLocalFile():
            return
        if self.drop_path(urls[0].toLocalFile()):
            event.acceptProposedAction()

    def drop_path(self, path: str) -> str | None:
        """What a drop does: a model folder, calibration data or a run file; returns the kind."""
        kind = classify_path(path)
        if kind is None or (self.running and kind != "run"):
            return None
        if kind == "run":
            if self.running:
                return None
            self.open_run(path)
        elif kind == "model":
            self.form.choose_model(model_path_for(path))
        else:
            self.form.choose_calibration(path)
        return kind

    # ================================================================== log, settings
    def log(self, message: str, level: str = "info") -> None:
        self.progressPanel.log(message, level)

    def _settings_list(self, key: str) -> list[str]:
        value = self.settings.value(key, [])
        if isinstance(value, str):
            return [value] if value else []
        return [str(v) for v in (value or [])]

    def _remember_model(self, path: str) -> None:
        from quailora_core.config import DEMO_MODEL

        if path and path != DEMO_MODEL:
            self.recent_models.add(path)
            self.settings.setValue("recent/models", self.recent_models.items)
            self.form.set_recent(self.recent_models.items, self.recent_calibration.items)

    def _remember_calibration(self, source: str) -> None:
        from quailora_core.config import DEMO_CALIBRATION

        if source and source != DEMO_CALIBRATION:
            self.recent_calibration.add(source)
            self.settings.setValue("recent/calibration", self.recent_calibration.items)
            self.form.set_recent(self.recent_models.items, self.recent_calibration.items)

    def _last_dir(self) -> str:
        return str(self.settings.value("paths/last_dir", str(Path.home())))

    def _remember_dir(self, path: str) -> None:
        self.settings.setValue("paths/last_dir", path)

    def _save_last_config(self, config: Any) -> None:
        self.settings.setValue("form/last_run", config.to_toml())

    def _last_config(self) -> Any | None:
        text = self.settings.value("form/last_run", "")
        if not text:
            return None
        import tomllib

        from quailora_core.config import RunConfig

        try:
            return RunConfig.from_dict(tomllib.loads(str(text)))
        except Exception:  # settings from another version: start from the defaults
            return None

    def _restore_geometry(self) -> None:
        geometry = self.settings.value("window/geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        state = self.settings.value("window/state")
        if isinstance(state, QByteArray) and not state.isEmpty():
            self.restoreState(state)
        splitter = self.settings.value("window/splitter")
        if isinstance(splitter, QByteArray) and not splitter.isEmpty():
            self.splitter.restoreState(splitter)
        self.logScaleCheck.setChecked(str(self.settings.value("charts/log_scale", "true")).lower() == "true")

    def save_settings(self) -> None:
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState())
        self.settings.setValue("window/splitter", self.splitter.saveState())
        self.settings.setValue("charts/log_scale", self.logScaleCheck.isChecked())
        self._save_last_config(self.form.to_config())
        self.settings.setValue("recent/models", self.recent_models.items)
        self.settings.setValue("recent/calibration", self.recent_calibration.items)
        self.settings.sync()

    # ================================================================== closing
    def _about(self) -> None:
        from .. import __version__

        QMessageBox.about(
            self,
            "About QuAILoRA Studio",
            f"<b>QuAILoRA Studio {__version__}</b><br>Quantization-aware initialization of LoRA adapters "
            "(Lawton et al., arXiv 2410.14713), with live per-layer charts.",
        )

    def shutdown(self, wait_ms: int = 30_000) -> None:
        """Cancel a run, stop the worker threads and save the settings (idempotent)."""
        if self._shut_down:
            return
        self._shut_down = True
        self._debounce.stop()
        self._refresh_timer.stop()
        self._clock.stop()
        self.save_settings()
        if self.worker is not None:
            self.worker.cancel()
        if self.train_process.running():  # the trainer checkpoints at the step end; then it is killed
            self.train_process.stop()
            if not self.train_process.process.waitForFinished(min(wait_ms, 15_000)):
                self.train_process.kill()
                self.train_process.process.waitForFinished(5_000)
        for thread, _ in self._run_threads:
            thread.quit()
            thread.wait(wait_ms)
        self._check_thread.quit()
        self._check_thread.wait(wait_ms)
        for dialog in self._dialogs:
            dialog.close()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        if self.training_active and not self.running and not self._shut_down:
            answer = QMessageBox.question(
                self,
                "Stop the training?",
                "Training is in progress. Stop it (a checkpoint is saved; Resume continues it) and close "
                "the window?",
            )
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
        if self.running and not self._shut_down:
            answer = QMessageBox.question(
                self,
                "Cancel the run?",
                "A run is in progress. Cancel it and close the window? Nothing of it will be written.",
            )
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
        self.shutdown()
        event.accept()
