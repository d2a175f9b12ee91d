"""The History tab: every run on disk under the output root, reopened, compared, resumed
and evaluated from the window.

A tab of the centre (beside the charts it fills when a run is reopened) rather than a dock:
it is one more way to choose what the centre shows, and the docks are for what runs now
(progress and log). `HistoryPanel` holds the widgets; `HistoryControl` drives them:

- the list comes from `quailora_core.history.scan_runs` (read from disk: a restart, or a run
  made with the command line, lists the same runs), refreshed after every run and training;
  the records are read in the files lane of the task runner, as every engine file is, never
  on the GUI thread (`refreshed`, `opened` say when the table or the run is shown);
- Open makes an init run the shown run of the session (`ResultsArea.add_finished` /
  `show_run`): Export adapter, Export merged, Export run, Launch and Compare then work on it
  as on a run of this window; a training run opens the adapter it trained and lets Resume
  continue it (`TrainingControl.resume_from`);
- Compare adds a run to the compare list without showing it;
- Evaluate runs `quailora eval` (`controllers.tasks.eval_task`) in the engine lane, through the
  one task runner; the state machine's evaluating phase keeps Run (and a second evaluation)
  out meanwhile, Cancel stops it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from quailora_core.errors import InputError
from quailora_core.events import Log, Stage
from quailora_core.history import INIT, History, RunEntry, scan_runs

from ..controllers.app_state import Action, Phase
from ..controllers.history import (
    COLUMNS,
    EVAL_COLUMNS,
    EVAL_DATA,
    EVAL_SAMPLES,
    EVAL_SEQ_LEN,
    OpenedRun,
    entry_row,
    eval_blocker,
    eval_rows,
    eval_verdict,
    init_path_of,
    open_blocker,
    read_for_open,
    resume_blocker,
    status_text,
)
from ..controllers.paths import next_free_output
from ..controllers.tasks import eval_task, file_task, run_failure
from .common import named, role_label, shrinkable
from .dialogs import show_failure, show_input_error

EVALUATE_TIP = ("Perplexity of the text under the full-precision base, the quantized base and the quantized "
                "base with the run's adapter (quailora eval).")


def _table(name: str, columns: tuple[str, ...]) -> QTableWidget:
    table = named(QTableWidget(0, len(columns)), name)
    table.setHorizontalHeaderLabels(list(columns))
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.verticalHeader().setVisible(False)
    table.horizontalHeader().setStretchLastSection(True)
    return table


class HistoryPanel(QWidget):
    """The widgets of the History tab."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("historyPanel")
        self.historyTable = _table("historyTable", COLUMNS)
        self.historyTable.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.historyRefreshButton = named(QPushButton("Refresh"), "historyRefreshButton",
                                          "List the runs on disk again.")  # fmt: skip
        self.historyOpenButton = named(QPushButton("Open"), "historyOpenButton",
                                       "Show the selected run: its charts, its adapter to export and train.")  # fmt: skip
        self.historyCompareButton = named(QPushButton("Compare"), "historyCompareButton",
                                          "Overlay the selected run on the shown one.")  # fmt: skip
        self.historyResumeButton = named(QPushButton("Resume"), "historyResumeButton",
                                         "Continue the selected training from its last checkpoint.")  # fmt: skip
        self.historyEvaluateButton = named(QPushButton("Evaluate"), "historyEvaluateButton", EVALUATE_TIP)
        self.historyStatusLabel = shrinkable(role_label("", "hint", "historyStatusLabel"))
        tools = QHBoxLayout()
        tools.setContentsMargins(6, 2, 6, 2)
        tools.addWidget(self.historyStatusLabel, 1)
        for button in (self.historyRefreshButton, self.historyOpenButton, self.historyCompareButton,
                       self.historyResumeButton, self.historyEvaluateButton):  # fmt: skip
            tools.addWidget(button)
        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addLayout(tools)
        top_layout.addWidget(self.historyTable, 1)

        self.evalDataEdit = named(QLineEdit(EVAL_DATA), "evalDataEdit",
                                  "Text to measure perplexity on, not the calibration text: a file, a hub dataset "
                                  "id, or demo (the built-in fine-tuning text).")  # fmt: skip
        self.evalSamplesSpin = named(QSpinBox(), "evalSamplesSpin", "Number of text blocks (usual: 32).")
        self.evalSamplesSpin.setRange(1, 100_000)
        self.evalSamplesSpin.setValue(EVAL_SAMPLES)
        self.evalSeqLenSpin = named(QSpinBox(), "evalSeqLenSpin", "Tokens per block (usual: 256).")
        self.evalSeqLenSpin.setRange(2, 131_072)
        self.evalSeqLenSpin.setValue(EVAL_SEQ_LEN)
        self.evalCancelButton = named(QPushButton("Cancel"), "evalCancelButton", "Stop the evaluation.")
        self.evalTable = _table("evalTable", EVAL_COLUMNS)
        self.evalTable.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        header = self.evalTable.horizontalHeader()
        header.setStretchLastSection(False)  # the row names get the room, the figures their width
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for column in (1, 2):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        self.evalSummaryLabel = role_label("Select a run and press Evaluate.", "hint", "evalSummaryLabel")
        self.evalSummaryLabel.setWordWrap(True)
        box = QGroupBox("Evaluation (quailora eval)")
        form = QFormLayout()
        form.addRow("Text", self.evalDataEdit)
        sizes = QHBoxLayout()
        sizes.addWidget(self.evalSamplesSpin)
        sizes.addWidget(role_label("blocks of"))
        sizes.addWidget(self.evalSeqLenSpin)
        sizes.addWidget(role_label("tokens"))
        sizes.addStretch(1)
        sizes.addWidget(self.evalCancelButton)
        form.addRow("Size", sizes)
        box_layout = QVBoxLayout(box)
        box_layout.addLayout(form)
        box_layout.addWidget(self.evalTable, 1)
        box_layout.addWidget(self.evalSummaryLabel)

        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(top)
        splitter.addWidget(box)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)

    def show_entries(self, entries: list[RunEntry], keep: str = "") -> None:
        """Fill the table (newest first), selecting the row of path `keep` if it is still there."""
        table = self.historyTable
        table.setSortingEnabled(False)
        table.setRowCount(len(entries))
        for row, entry in enumerate(entries):
            for col, text in enumerate(entry_row(entry)):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, row)
                item.setToolTip(text)
                table.setItem(row, col, item)
            if entry.path == keep:
                table.selectRow(row)

    def show_eval(self, rows: list[tuple[str, str, str]], verdict: str) -> None:
        self.evalTable.setRowCount(len(rows))
        for r, cells in enumerate(rows):
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if c:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.evalTable.setItem(r, c, item)
        self.evalSummaryLabel.setText(verdict)


class HistoryControl(QObject):
    """Drives the History tab for the window (see the module docstring)."""

    refreshed = Signal(object)  # quailora_core.history.History, after the table was filled
    opened = Signal(object)  # the FinishedRun shown or added for Compare (None: a training run without it)
    evaluated = Signal(object)  # the core's EvalReport, after the table was filled
    evalEnded = Signal(str)  # "finished" | "failed" | "cancelled"

    def __init__(self, window: Any) -> None:
        super().__init__(window)
        self.w = window
        self.panel = p = HistoryPanel()
        window.results_area.tabs.addTab(p, "History")
        self.history = History()
        self.handle: Any = None  # the evaluation under way
        self.evaluating: RunEntry | None = None
        p.historyRefreshButton.clicked.connect(lambda: self.refresh())
        p.historyOpenButton.clicked.connect(lambda: self.open_selected())
        p.historyCompareButton.clicked.connect(lambda: self.compare_selected())
        p.historyResumeButton.clicked.connect(lambda: self.resume_selected())
        p.historyEvaluateButton.clicked.connect(lambda: self.evaluate_selected())
        p.evalCancelButton.clicked.connect(lambda: self.cancel_eval())
        p.historyTable.itemSelectionChanged.connect(lambda: self._apply_state(window.state))
        p.historyTable.itemDoubleClicked.connect(lambda _item: self.open_selected())
        for signal in (window.runFinished, window.trainingFinished, window.trainingStopped, window.trainingFailed):
            signal.connect(lambda *_: self.refresh())
        self.queued_outputs: list[str] = []  # folders the queue's jobs filled (listed wherever they are)
        window.queue_control.jobEvent.connect(self._on_job_event)
        window.state.subscribe(self._apply_state)
        self.refresh()

    # ------------------------------------------------------------------ the list
    def refresh(self) -> bool:
        """List the runs on disk again, in the files lane (records are engine files: none is
        read on the GUI thread); `refreshed` fires when the table is filled. A newer refresh
        supersedes one not delivered yet. Returns whether it started."""
        w = self.w
        if w.tasks.closed:
            return False
        also = [run.output_dir for run in w.results_area.session.runs]  # this session's runs, wherever written
        if w.training_control.run_dir:
            also.append(w.training_control.run_dir)
        also += self.queued_outputs
        w.tasks.start(file_task("list runs", lambda: scan_runs(also=also), on_done=self._on_listed,
                                on_error=self._on_list_failed, supersede=True))  # fmt: skip
        return True

    def _on_job_event(self, event: Any) -> None:
        """A job of the queue's runner finished: its run belongs in the History at once."""
        from quailora_core.events import JobUpdate

        if isinstance(event, JobUpdate) and event.state == "done":
            if event.output and event.output not in self.queued_outputs:
                self.queued_outputs.append(event.output)
            self.refresh()

    def _on_listed(self, history: History) -> None:
        selected = self.selected()
        self.history = history
        self.panel.show_entries(history.entries, selected.path if selected else "")
        n, skipped = len(history.entries), len(history.skipped)
        text = f"{n} run{'s' if n != 1 else ''} on disk" + (f", {skipped} folders could not be read" if skipped else "")
        self.panel.historyStatusLabel.setText(text)
        self.panel.historyStatusLabel.setToolTip(
            "\n".join(f"{s.path}: {s.reason}" for s in history.skipped) or "Runs under the output root."
        )
        self._apply_state(self.w.state)
        self.refreshed.emit(history)

    def _on_list_failed(self, exc: BaseException, _details: str) -> None:
        self.panel.historyStatusLabel.setText(f"The runs could not be listed: {exc}")
        self.w.log(f"The runs on disk could not be listed: {exc}", "error")

    def selected(self) -> RunEntry | None:
        rows = self.panel.historyTable.selectionModel().selectedRows()
        if not rows or rows[0].row() >= len(self.history.entries):
            return None
        return self.history.entries[rows[0].row()]

    def select(self, path: str) -> bool:
        """Select the row of the run in `path` (as a click would)."""
        want = str(Path(path).expanduser().resolve())
        for row, entry in enumerate(self.history.entries):
            if entry.path == want:
                self.panel.historyTable.selectRow(row)
                return True
        return False

    def _apply_state(self, state: Any) -> None:
        p, entry = self.panel, self.selected()
        reopen = state.enabled(Action.REOPEN) and entry is not None
        free = state.phase is Phase.IDLE and state.exporting is None

        def set_button(button: QPushButton, on: bool, why: str, tip: str) -> None:
            button.setEnabled(on and not why)
            button.setToolTip(why or tip)

        set_button(p.historyOpenButton, reopen, open_blocker(entry) if entry else "", "Show the selected run.")
        set_button(p.historyCompareButton, reopen and entry.kind == INIT, "",
                   "Overlay the selected initialization on the shown run.")  # fmt: skip
        set_button(p.historyResumeButton, free and entry is not None, resume_blocker(entry) if entry else "",
                   "Continue the selected training from its last checkpoint.")  # fmt: skip
        set_button(p.historyEvaluateButton, state.enabled(Action.EVALUATE) and entry is not None,
                   eval_blocker(entry) if entry else "", EVALUATE_TIP)
        p.evalCancelButton.setEnabled(state.phase is Phase.EVALUATING)
        p.historyRefreshButton.setEnabled(state.phase is not Phase.CLOSED)

    # ------------------------------------------------------------------ open, compare, resume
    def open_selected(self, then: Callable[[], Any] | None = None) -> bool:
        """Show the selected run: an init run becomes the shown run of the session; a training
        run shows the adapter it trained and its curve, and Resume continues it. What it needs
        is read in the files lane; `opened` fires when it is shown, after which `then` runs."""
        entry = self.selected()
        if entry is None or open_blocker(entry):
            return False
        return self._open(entry, show=True, then=then)

    def compare_selected(self) -> bool:
        """Put the selected init run in the compare list (read from disk the first time) and
        overlay it on the shown run, without showing it."""
        entry = self.selected()
        return entry is not None and entry.kind == INIT and self._open(entry, show=False)

    def resume_selected(self) -> bool:
        """Open the selected training run, then Resume it (a new window knows its run folder)."""
        entry = self.selected()
        if entry is None or resume_blocker(entry):
            return False
        return self.open_selected(then=self.w.training_control.resume)

    def _open(self, entry: RunEntry, show: bool, then: Callable[[], Any] | None = None) -> bool:
        w = self.w
        if not w.state.enabled(Action.REOPEN):
            return False
        path = init_path_of(entry)
        known = bool(path) and w.results_area.session.find(path) is not None

        def done(opened: OpenedRun) -> None:
            self._on_read(opened, show)
            if then is not None:
                then()

        w.tasks.start(file_task("open run", lambda: read_for_open(entry, known), on_done=done,
                                on_error=lambda exc, details: self._on_open_failed(entry, exc, details)))  # fmt: skip
        return True

    def _on_read(self, opened: OpenedRun, show: bool) -> None:
        w, entry, area = self.w, opened.entry, self.w.results_area
        if not w.state.enabled(Action.REOPEN):  # a run started while the files were read
            w.log(f"Not opened while {w.state.describe()}: {entry.path}", "warning")
            return
        for note in opened.notes:
            w.log(note, "warning")
        run = None
        if opened.init_path:
            run = area.session.find(opened.init_path)
            if run is None:
                run = area.add_finished(opened.stored.config, opened.stored, show=False)
            if show:
                area.show_run(run)
                w.training_control.show_source(run)
                w.state.note(has_run=True, has_results=bool(run.layers))
                w.log(f"Opened {run.name} from {run.output_dir}")
            else:
                w.compareCombo.setCurrentIndex(w.compareCombo.findData(run.number))
        if entry.kind != INIT and show:
            control = w.training_control
            if entry.run_dir:
                if run is not None:  # a new Launch goes beside the run folder, not into it
                    w.trainingPanel.trainOutputEdit.setText(next_free_output(entry.run_dir))
                if opened.train is not None:
                    control.resume_from(entry.run_dir, opened.train)
                else:
                    control.run_dir = entry.run_dir
                    control.sync()
            if opened.curve:  # its loss curve on the Training tab; a resume continues it
                control.training.reset()
                for event in opened.curve:
                    control.training.on_event(event)
                w.trainingPanel.show_state(control.training)
            w.log(f"Training run {entry.path}: {status_text(entry)}")
            w.tabs.setCurrentWidget(w.trainingPanel)
        elif show:
            w.tabs.setCurrentIndex(0)
        self.opened.emit(run)

    def _on_open_failed(self, entry: RunEntry, exc: BaseException, details: str) -> None:
        w = self.w
        if isinstance(exc, InputError):
            w.keep_dialog(show_input_error(w, exc, "Could not open the run"))
            w.log(f"Could not open the run in {entry.path}: {exc.message}", "error")
        else:
            failed = run_failure(exc, details)
            w.keep_dialog(show_failure(w, failed, "Could not open the run"))
            w.log(f"Could not open the run in {entry.path}: {failed.message}", "error")

    # ------------------------------------------------------------------ evaluate
    def evaluate_selected(self) -> bool:
        entry = self.selected()
        return entry is not None and self.evaluate(entry)

    def evaluate(self, entry: RunEntry) -> bool:
        """`quailora eval` of the run's adapter in the engine lane; False when not allowed now."""
        w, p = self.w, self.panel
        if not w.state.enabled(Action.EVALUATE) or eval_blocker(entry):
            return False
        data = p.evalDataEdit.text().strip() or EVAL_DATA
        samples, seq_len = p.evalSamplesSpin.value(), p.evalSeqLenSpin.value()
        w.state.start_eval()
        self.evaluating = entry
        p.show_eval([], f"Evaluating {entry.label} on {samples} × {seq_len} tokens of {data!r}…")
        w.progressPanel.set_busy("Evaluating…")
        w.progressPanel.etaLabel.setText("")
        w.log(f"Evaluation started: {entry.evaluable_adapter} on {samples} x {seq_len} tokens of {data!r}")
        task = eval_task(entry.evaluable_adapter, data, samples, seq_len, on_event=self._on_event,
                         on_done=self._on_done, on_error=self._on_error, on_cancelled=self._on_cancelled)  # fmt: skip
        self.handle = w.tasks.start(task)
        return True

    def cancel_eval(self) -> bool:
        w = self.w
        if w.state.phase is not Phase.EVALUATING or self.handle is None:
            return False
        self.handle.cancel()
        w.state.cancel()
        w.progressPanel.currentLayerLabel.setText("Cancelling the evaluation after the current batch…")
        w.log("Cancel requested: the evaluation stops after the current batch.", "warning")
        return True

    def _on_event(self, event: Any) -> None:
        if isinstance(event, Log):
            self.w.log(event.message, event.level)
        elif isinstance(event, Stage):
            self.w.progressPanel.set_busy(f"Evaluating: {event.name}…")

    def _end(self, message: str) -> None:
        self.handle = None
        self.evaluating = None
        self.w.progressPanel.set_idle(message)
        self.w.state.end_eval()

    def _on_done(self, report: Any) -> None:
        self.panel.show_eval(eval_rows(report), eval_verdict(report))
        self._end("Evaluation finished.")
        self.w.log("Evaluation finished:\n" + report.table())
        self.evaluated.emit(report)
        self.evalEnded.emit("finished")

    def _on_error(self, exc: BaseException, details: str) -> None:
        failed = run_failure(exc, details)
        self.panel.show_eval([], f"The evaluation failed: {failed.message}")
        self._end(f"Evaluation failed: {failed.message}")
        self.w.log(f"Evaluation failed: {failed.message} {failed.hint}".strip(), "error")
        self.w.keep_dialog(show_failure(self.w, failed, "Evaluation failed"))
        self.evalEnded.emit("failed")

    def _on_cancelled(self) -> None:
        self.panel.show_eval([], "The evaluation was cancelled.")
        self._end("Evaluation cancelled.")
        self.w.log("Evaluation cancelled.", "warning")
        self.evalEnded.emit("cancelled")
