"""The Training tab: settings, Export run / Launch / Stop / Resume, live curves; and the child process.

`TrainingPanel` shows the settings and the charts; it computes nothing (the figures come
from a `controllers.training.TrainingState`). `TrainingProcess` runs the exported run's
command as a `QProcess` in its own session (so Stop reaches every process it started),
cuts its stdout into lines and reports through signals on the GUI thread.
"""

from __future__ import annotations

import math
import os
import signal
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..controllers.form_fields import CHOICE, FLOAT, TEXT, TRAIN_FIELDS, default_value
from ..controllers.labels import RUN_KIND_LABELS
from ..controllers.training import RANK_COLUMNS, LineBuffer, TrainingState, tracker_choices
from .charts import AFTER, BEFORE, COMPARE, HELD_AFTER, _style_plot
from .common import error_label, named, restyle, role_label, set_error

DATA_FORMAT_LABELS = {"auto": "auto (from the fields)", "text": "plain text", "prompt_response": "prompt / response"}

MAX_RANK_ROWS = 8  # rows the per-process table shows before it scrolls
KILL_AFTER_MS = 30_000  # Stop: SIGTERM (the trainer checkpoints at the step end), then SIGKILL


# ============================================================================ the panel
class TrainingPanel(QWidget):
    """Training settings on the left, loss / learning-rate / perplexity curves on the right."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.adapterLabel = role_label(
            "Finish an initialization run first: training starts from its adapter.",
            "hint",
            "trainAdapterLabel",
        )
        self.adapterLabel.setTextFormat(Qt.TextFormat.RichText)

        self.trainDataEdit = named(QLineEdit("demo"), "trainDataEdit")
        self.trainDataEdit.setPlaceholderText("file, folder, hub id, or demo")
        self.trainDataBrowseButton = named(QPushButton("…"), "trainDataBrowseButton")
        self.trainDataBrowseButton.setFixedWidth(30)
        self.trainDataBrowseButton.clicked.connect(self._browse_data)
        self.trainDataError = error_label("trainDataError")
        self.dataFormatCombo = named(QComboBox(), "dataFormatCombo")
        for value, label in DATA_FORMAT_LABELS.items():
            self.dataFormatCombo.addItem(label, value)
        self.trainTextColumnEdit = named(QLineEdit(), "trainTextColumnEdit")
        self.trainTextColumnEdit.setPlaceholderText(str(default_value("train.text_column")))
        self.validationDataEdit = named(QLineEdit(), "validationDataEdit")
        self.validationDataEdit.setPlaceholderText("empty: hold out a share of the training data")
        self.validationDataBrowseButton = named(QPushButton("…"), "validationDataBrowseButton")
        self.validationDataBrowseButton.setFixedWidth(30)
        self.validationDataBrowseButton.clicked.connect(self._browse_validation)
        self.validationDataError = error_label("validationDataError")
        self.validationFractionSpin = named(QDoubleSpinBox(), "validationFractionSpin")
        self.validationFractionSpin.setRange(0.0, 0.95)
        self.validationFractionSpin.setDecimals(3)
        self.validationFractionSpin.setSingleStep(0.01)
        self.validationFractionSpin.setSpecialValueText("none (no validation)")
        self.validationDataEdit.textChanged.connect(
            lambda text: self.validationFractionSpin.setEnabled(not text.strip())
        )
        self.maxStepsSpin = self._spin("maxStepsSpin", 1, 10_000_000)
        self.epochsSpin = named(QDoubleSpinBox(), "epochsSpin")
        self.epochsSpin.setRange(0.0, 1000.0)
        self.epochsSpin.setDecimals(2)
        self.epochsSpin.setSingleStep(0.5)
        self.epochsSpin.setSpecialValueText("off (use max steps)")
        self.epochsSpin.valueChanged.connect(lambda v: self.maxStepsSpin.setEnabled(v == 0))
        self.learningRateSpin = named(QDoubleSpinBox(), "learningRateSpin")
        self.learningRateSpin.setDecimals(6)
        self.learningRateSpin.setRange(1e-6, 1.0)
        self.learningRateSpin.setSingleStep(1e-5)
        self.trainBatchSizeSpin = self._spin("trainBatchSizeSpin", 1, 4096)
        self.gradAccumSpin = self._spin("gradAccumSpin", 1, 4096)
        self.trainSeqLenSpin = self._spin("trainSeqLenSpin", 8, 131_072)
        self.evalIntervalSpin = self._spin("evalIntervalSpin", 1, 10_000_000)
        self.saveIntervalSpin = self._spin("saveIntervalSpin", 1, 10_000_000)
        self.warmupSpin = self._spin("warmupSpin", 0, 10_000_000)
        self.trainSeedSpin = self._spin("trainSeedSpin", 0, 2**31 - 1)
        self.trackingCombo = named(QComboBox(), "trackingCombo")
        for value, label in tracker_choices():
            self.trackingCombo.addItem(label, value)
        # the run kind and the number of processes: of the exported folder (its launch.sh starts
        # them, NUM_PROCESSES and NUM_MACHINES overriding) and of Launch here
        self.runKindCombo = named(QComboBox(), "runKindCombo")
        for value, label in RUN_KIND_LABELS.items():
            self.runKindCombo.addItem(label, value)
        self.trainProcessesSpin = self._spin("trainProcessesSpin", 0, 4096)
        self.trainProcessesSpin.setSpecialValueText("auto (1, or every GPU)")
        self.trainOutputEdit = named(QLineEdit(), "trainOutputEdit")
        self.trainOutputBrowseButton = named(QPushButton("…"), "trainOutputBrowseButton")
        self.trainOutputBrowseButton.setFixedWidth(30)
        self.trainOutputBrowseButton.clicked.connect(self._browse_output)

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Training data", _row(self.trainDataEdit, self.trainDataBrowseButton))
        form.addRow("", self.trainDataError)
        form.addRow("Data format", self.dataFormatCombo)
        form.addRow("Text column", self.trainTextColumnEdit)
        form.addRow("Validation data", _row(self.validationDataEdit, self.validationDataBrowseButton))
        form.addRow("", self.validationDataError)
        form.addRow("Validation share", self.validationFractionSpin)
        form.addRow("Max steps", self.maxStepsSpin)
        form.addRow("Epochs", self.epochsSpin)
        form.addRow("Learning rate", self.learningRateSpin)
        form.addRow("Batch size", self.trainBatchSizeSpin)
        form.addRow("Grad. accumulation", self.gradAccumSpin)
        form.addRow("Sequence length", self.trainSeqLenSpin)
        form.addRow("Eval every", self.evalIntervalSpin)
        form.addRow("Save every", self.saveIntervalSpin)
        form.addRow("Warm-up steps", self.warmupSpin)
        form.addRow("Seed", self.trainSeedSpin)
        form.addRow("Tracking", self.trackingCombo)
        form.addRow("Run kind", self.runKindCombo)
        form.addRow("Processes", self.trainProcessesSpin)
        form.addRow("Output folder", _row(self.trainOutputEdit, self.trainOutputBrowseButton))
        self.settingsBox = QGroupBox("Fine-tuning")
        self.settingsBox.setObjectName("trainSettingsBox")
        self.settingsBox.setLayout(form)

        self.exportRunButton = named(QPushButton("Export run…"), "exportRunButton")
        self.launchTrainingButton = named(QPushButton("Launch"), "launchTrainingButton")
        self.launchTrainingButton.setProperty("role", "primary")
        self.stopTrainingButton = named(QPushButton("Stop"), "stopTrainingButton")
        self.resumeTrainingButton = named(QPushButton("Resume"), "resumeTrainingButton")
        for b in (
            self.exportRunButton,
            self.launchTrainingButton,
            self.stopTrainingButton,
            self.resumeTrainingButton,
        ):
            b.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.exportRunButton)
        buttons.addStretch(1)
        buttons.addWidget(self.stopTrainingButton)
        buttons.addWidget(self.resumeTrainingButton)
        buttons.addWidget(self.launchTrainingButton)
        self.trainStatusLabel = role_label("", "hint", "trainStatusLabel")
        self.trainStatusLabel.setWordWrap(True)

        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        lv.addWidget(self.adapterLabel)
        lv.addWidget(self.settingsBox)
        lv.addLayout(buttons)
        lv.addWidget(self.trainStatusLabel)
        lv.addStretch(1)
        scroll = QScrollArea()
        scroll.setObjectName("trainSettingsScroll")
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(left)
        scroll.setMinimumWidth(260)  # a 1024-pixel window still leaves the charts room
        scroll.setMaximumWidth(380)

        self.charts = TrainingCharts()
        self.lossChart = self.charts.lossChart
        self.lrChart = self.charts.lrChart
        self.perplexityChart = self.charts.perplexityChart
        self.trainStatsLabel = named(role_label("", "", "trainStatsLabel"), "trainStatsLabel")
        self.trainStatsLabel.setWordWrap(True)  # a narrow window wraps it; it never loses "Time left"
        self.trainStatsLabel.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        right = QWidget()
        rv = QVBoxLayout(right)
        rv.setContentsMargins(0, 0, 0, 0)
        rv.addWidget(self.charts, 1)
        rv.addWidget(self.trainStatsLabel)
        self.rankTable = RankTable()
        rv.addWidget(self.rankTable)

        layout = QHBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(scroll)
        layout.addWidget(right, 1)
        from quailora_core.config import TrainSettings

        self.set_settings(TrainSettings())  # the core's defaults (the data stays the demo text)

    @staticmethod
    def _spin(name: str, low: int, high: int) -> QSpinBox:
        spin = named(QSpinBox(), name)
        spin.setRange(low, high)
        spin.setGroupSeparatorShown(True)
        return spin

    # ------------------------------------------------------------------ values
    def settings(self) -> dict[str, Any]:
        """TrainSettings field -> value of the fields shown here (the output is separate), by
        the field table `controllers.form_fields.TRAIN_FIELDS`."""
        values: dict[str, Any] = {}
        for f in TRAIN_FIELDS:
            w = getattr(self, f.name)
            if f.kind == TEXT:
                value = w.text().strip()
                if not value and f.blank_is_default:
                    value = default_value(f.path)
            elif f.kind == CHOICE:
                value = w.currentData()
            else:
                value = w.value()
            values[f.path.removeprefix("train.")] = float(value) if f.kind == FLOAT else value
        return values

    def set_settings(self, t: Any) -> None:
        """Show a TrainSettings (the data left as is when the run has none)."""
        for f in TRAIN_FIELDS:
            value = getattr(t, f.path.removeprefix("train."))
            w = getattr(self, f.name)
            if f.kind == TEXT:
                if value or f.blank_is_default:
                    w.setText("" if f.blank_is_default and value == default_value(f.path) else value)
            elif f.kind == CHOICE:
                index = w.findData(value)
                if index < 0:  # a value this app does not offer (a run file's): shown, the core judges it
                    w.addItem(str(value), value)
                    index = w.count() - 1
                w.setCurrentIndex(index)
            else:
                w.setValue(value)

    def set_installed_trackers(self, installed: set[str]) -> None:
        """Grey out the trackers whose package is missing here (their tooltip says what to install)."""
        model = self.trackingCombo.model()
        for i in range(self.trackingCombo.count()):
            name = self.trackingCombo.itemData(i)
            item = model.item(i)
            on = name in installed
            item.setEnabled(on)
            item.setToolTip("" if on else f"Not installed here: pip install {name}")

    def show_source_error(self, field: str, text: str) -> None:
        """The red mark and line under the training or validation data field ("" clears them)."""
        edit, label = ((self.trainDataEdit, self.trainDataError) if field == "train.data"
                       else (self.validationDataEdit, self.validationDataError))  # fmt: skip
        set_error(label, text)
        invalid = "true" if text else "false"
        if edit.property("invalid") != invalid:
            edit.setProperty("invalid", invalid)
            restyle(edit)

    def set_inputs_enabled(self, on: bool) -> None:
        self.settingsBox.setEnabled(on)

    def show_state(self, state: TrainingState) -> None:
        self.charts.show_state(state)
        self.trainStatsLabel.setText(
            "  ·  ".join(f"<span style='color:#64748b'>{k}</span> <b>{v}</b>" for k, v in state.stats())
        )
        self.rankTable.show_rows(state.rank_rows())

    def _browse_data(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Training data",
            "",
            "Text or JSON lines (*.txt *.md *.jsonl *.json *.csv *.parquet);;All (*)",
        )
        if path:
            self.trainDataEdit.setText(path)

    def _browse_validation(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Validation data",
            "",
            "Text or JSON lines (*.txt *.md *.jsonl *.json *.csv *.parquet);;All (*)",
        )
        if path:
            self.validationDataEdit.setText(path)

    def _browse_output(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Training output folder")
        if path:
            self.trainOutputEdit.setText(path)


def _row(*widgets: QWidget) -> QWidget:
    box = QWidget()
    lay = QHBoxLayout(box)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.setSpacing(4)
    for i, w in enumerate(widgets):
        lay.addWidget(w, 1 if i == 0 else 0)
    return box


# ============================================================================ the processes
class RankTable(QTableWidget):
    """One row per training process of a multi-process run, at its last log step (the
    figures of `TrainingState.rank_rows`); hidden while the run has one process."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, len(RANK_COLUMNS), parent)
        self.setObjectName("rankTable")
        self.setHorizontalHeaderLabels(list(RANK_COLUMNS))
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)  # the machine's name takes the rest
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Maximum)
        self.setVisible(False)

    def show_rows(self, rows: list[tuple[str, ...]]) -> None:
        self.setVisible(bool(rows))
        if not rows:
            self.setRowCount(0)
            return
        self.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                item = self.item(r, c)
                if item is None:
                    item = QTableWidgetItem()
                    item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                    self.setItem(r, c, item)
                item.setText(text)
        visible = min(len(rows), MAX_RANK_ROWS)  # a 64-GPU run scrolls instead of pushing the charts away
        self.setFixedHeight(self.horizontalHeader().height() + visible * self.rowHeight(0) + 2 * self.frameWidth())

    def rows(self) -> list[list[str]]:
        """The texts shown, row by row (for tests)."""
        return [[self.item(r, c).text() for c in range(self.columnCount())] for r in range(self.rowCount())]


# ============================================================================ charts
class TrainingCharts(QWidget):
    """Training loss with validation loss points (top), validation perplexity and learning rate."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("trainingCharts")
        # the legend is the title line (as on the layer-error chart): inside the plot it covered
        # the curves, which start at its top corner and fall
        legend = "&nbsp;&nbsp;&nbsp;".join(
            f"<span style='color:{color.name()}'>{glyph}</span> {text}"
            for color, glyph, text in ((BEFORE, "━", "training"), (AFTER, "━━", "smoothed"), (COMPARE, "●", "validation"))
        )
        self.lossChart, loss = self._plot("lossChart", "Loss", "loss", legend)
        self.lossCurve = loss.plot([], [], pen=pg.mkPen(BEFORE, width=1), name="training")
        self.smoothCurve = loss.plot([], [], pen=pg.mkPen(AFTER, width=2), name="training (smoothed)")
        self.evalPoints = loss.plot(
            [], [], pen=None, symbol="o", symbolSize=9, symbolBrush=pg.mkBrush(COMPARE),
            symbolPen=pg.mkPen("w"), name="validation",
        )  # fmt: skip
        self.perplexityChart, ppl = self._plot("perplexityChart", "Validation perplexity", "perplexity")
        self.perplexityCurve = ppl.plot(
            [], [], pen=pg.mkPen(COMPARE, width=1, style=Qt.PenStyle.DashLine), symbol="o",
            symbolSize=8, symbolBrush=pg.mkBrush(COMPARE), symbolPen=pg.mkPen("w"),
        )  # fmt: skip
        self.lrChart, lr = self._plot("lrChart", "Learning rate", "lr")
        lr.getAxis("left").enableAutoSIPrefix(False)
        self.lrCurve = lr.plot([], [], pen=pg.mkPen(HELD_AFTER, width=2))
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(4)
        grid.addWidget(self.lossChart, 0, 0, 1, 2)
        grid.addWidget(self.perplexityChart, 1, 0)
        grid.addWidget(self.lrChart, 1, 1)
        grid.setRowStretch(0, 3)
        grid.setRowStretch(1, 2)

    @staticmethod
    def _plot(name: str, title: str, ylabel: str, legend: str = "") -> tuple[pg.PlotWidget, pg.PlotItem]:
        widget = named(pg.PlotWidget(background="w"), name)
        plot = widget.getPlotItem()
        _style_plot(plot)
        key = f"&nbsp;&nbsp;&nbsp;&nbsp;<span style='color:#334155; font-size:9pt'>{legend}</span>" if legend else ""
        plot.setTitle(f"<span style='color:#1e3a8a; font-weight:bold'>{title}</span>{key}", size="10pt")
        plot.setLabel("bottom", "step")
        plot.setLabel("left", ylabel)
        return widget, plot

    def show_state(self, state: TrainingState) -> None:
        self.lossCurve.setData(state.steps, state.losses)
        self.smoothCurve.setData(state.steps, state.smoothed_losses())
        self.evalPoints.setData(state.eval_steps, state.eval_losses)
        finite = [
            (s, p) for s, p in zip(state.eval_steps, state.perplexities, strict=True) if math.isfinite(p)
        ]
        self.perplexityCurve.setData([s for s, _ in finite], [p for _, p in finite])
        self.lrCurve.setData(state.steps, state.lrs)

    def loss_data(self) -> tuple[list[float], list[float]]:
        """(steps, losses) the training-loss curve draws (for tests)."""
        x, y = self.lossCurve.getData()
        return ([] if x is None else list(x)), ([] if y is None else list(y))


# ============================================================================ the process
class TrainingProcess(QObject):
    """The training command as a child process in its own session.

    Signals (GUI thread): `line(str)` for each stdout line, `errorLine(str)` for each
    stderr line, `ended(int exit_code, bool crashed)` once the process is gone, and
    `startFailed(str)` when it could not be started at all.
    """

    line = Signal(str)
    errorLine = Signal(str)
    ended = Signal(int, bool)
    startFailed = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.process = QProcess(self)
        self.process.setObjectName("trainingProcess")
        self._out, self._err = LineBuffer(), LineBuffer()
        self.pid = 0
        self.stop_requested = False
        self._family: list[Any] = []  # psutil.Process of everything the child started (note_family)
        self._kill_timer = QTimer(self)
        self._kill_timer.setSingleShot(True)
        self._kill_timer.timeout.connect(self.kill)
        self.process.readyReadStandardOutput.connect(self._read_out)
        self.process.readyReadStandardError.connect(self._read_err)
        self.process.finished.connect(self._on_finished)
        self.process.errorOccurred.connect(self._on_error)

    def start(self, command: list[str], workdir: str, env: dict[str, str]) -> None:
        self.stop_requested = False
        self._family = []
        self._out, self._err = LineBuffer(), LineBuffer()
        environment = QProcessEnvironment.systemEnvironment()
        for key, value in env.items():
            environment.insert(key, value)
        self.process.setProcessEnvironment(environment)
        self.process.setWorkingDirectory(workdir)
        if hasattr(QProcess, "setUnixProcessParameters") and os.name == "posix":
            flags = QProcess.UnixProcessFlag
            # its own session and process group: Stop signals the whole group, children included
            self.process.setUnixProcessParameters(flags.CreateNewSession | flags.ResetSignalHandlers)
        self.process.start(command[0], command[1:])
        self.pid = 0
        if self.process.waitForStarted(10_000):
            self.pid = int(self.process.processId())

    def running(self) -> bool:
        return self.process.state() != QProcess.ProcessState.NotRunning

    def stop(self, kill_after_ms: int = KILL_AFTER_MS) -> None:
        """SIGTERM to the process group (the trainer saves a checkpoint at the step end; a
        launcher forwards it to its ranks); SIGKILL to the group and the ranks if it is still
        there after `kill_after_ms`."""
        if not self.running():
            return
        self.stop_requested = True
        self.note_family()
        if not self._signal_group(signal.SIGTERM):
            self.process.terminate()
        self._kill_timer.start(kill_after_ms)

    def kill(self) -> None:
        if self.running() and not self._signal_group(signal.SIGKILL):
            self.process.kill()
        self._kill_family()

    def note_family(self) -> None:
        """Remember the processes the child has started. A launcher (torchrun, under launch.sh)
        starts each rank in a session of its own: the group signal does not reach them, and once
        the launcher is gone they are no longer its children. Remembered, they are ended with it."""
        import psutil

        try:
            found = psutil.Process(self.pid).children(recursive=True) if self.pid else []
        except psutil.Error:
            return
        known = {p.pid for p in self._family}
        self._family += [p for p in found if p.pid not in known]

    def _kill_family(self) -> None:
        import psutil

        for proc in self._family:
            try:
                if proc.is_running():  # the same process: psutil compares its start time (no reused pid)
                    proc.kill()
            except psutil.Error:
                pass

    def _signal_group(self, sig: int) -> bool:
        if os.name != "posix" or not self.pid:
            return False
        try:
            os.killpg(self.pid, sig)  # the child leads its own group (CreateNewSession)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def _read_out(self) -> None:
        for text in self._out.feed(self.process.readAllStandardOutput().data()):
            self.line.emit(text)

    def _read_err(self) -> None:
        for text in self._err.feed(self.process.readAllStandardError().data()):
            self.errorLine.emit(text)

    def _on_finished(self, code: int, status: QProcess.ExitStatus) -> None:
        self._kill_timer.stop()
        self._read_out()
        self._read_err()
        for text in self._out.flush():
            self.line.emit(text)
        for text in self._err.flush():
            self.errorLine.emit(text)
        # anything the trainer left behind in its group, and ranks a launcher left in their sessions
        self._signal_group(signal.SIGKILL)
        self._kill_family()
        self.ended.emit(int(code), status == QProcess.ExitStatus.CrashExit)

    def _on_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self.startFailed.emit(self.process.errorString())
