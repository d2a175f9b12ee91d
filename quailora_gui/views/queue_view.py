"""The Queue tab: the job table and its buttons (`QueuePanel`), the sweep dialog, and the
control that drives the core's queue from the window (`QueueControl`).

The window shows what the queue file says: it re-reads it when its folder changes (a
QFileSystemWatcher; the file is replaced atomically, so its folder is what changes) and
every REFRESH_MS besides, so a job a terminal adds, and the states a runner writes, appear
here. Start runs the queue as the command line's runner in a child process (the same
`TrainingProcess` the Training tab uses: its own session, Stop signals the whole group), and
the child's JSON events go to the log and the status bar. The rows and the buttons' states
come from `controllers.queue`; the changes are the core's (`quailora_core.jobs`).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QFileSystemWatcher, QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..controllers.queue import (
    BUTTONS,
    COLUMNS,
    job_event_text,
    job_progress_text,
    pause_text,
    queue_buttons,
    queue_rows,
    queue_status,
    runner_command,
)
from ..controllers.training import parse_line, plain_line
from .common import named, role_label
from .dialogs import show_input_error
from .training_view import TrainingProcess

REFRESH_MS = 1000  # the queue file is re-read this often besides the folder watcher
SWEEP_RANKS = (4, 8, 16, 32, 64)
STOP_WAIT_MS = 15_000


class QueuePanel(QWidget):
    """The job table, its buttons and a status line; it shows rows, it changes nothing."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("queuePanel")
        self.queueTable = named(QTableWidget(0, len(COLUMNS)), "queueTable", "The queued runs, in run order.")
        self.queueTable.setHorizontalHeaderLabels(list(COLUMNS))
        self.queueTable.verticalHeader().setVisible(False)
        self.queueTable.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.queueTable.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.queueTable.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        header = self.queueTable.horizontalHeader()
        for column in range(len(COLUMNS)):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(len(COLUMNS) - 1, QHeaderView.ResizeMode.Stretch)
        texts = {"queueStartButton": "Start", "queuePauseButton": "Pause", "queueUpButton": "Up",
                 "queueDownButton": "Down", "queueCancelButton": "Cancel job", "queueRemoveButton": "Remove"}  # fmt: skip
        tips = {"queueStartButton": "Run the queued jobs one after another in a background process",
                "queuePauseButton": "Let the running job finish, then start no other",
                "queueCancelButton": "Cancel the selected job (a running one stops at its next step)",
                "queueRemoveButton": "Take the selected job out of the queue"}  # fmt: skip
        for name in BUTTONS:
            setattr(self, name, named(QPushButton(texts[name]), name, tips.get(name, "")))
        self.queueSweepButton = named(QPushButton("Add sweep…"), "queueSweepButton",
                                      "Queue the form's run once per rank, method and bit width")  # fmt: skip
        self.queueClearButton = named(QPushButton("Clear finished"), "queueClearButton")
        self.queueStatusLabel = role_label("", "hint", "queueStatusLabel")
        self.queueStartButton.setProperty("role", "primary")
        self.queueStatusLabel.setWordWrap(True)
        # two rows: the tab must not widen the centre beyond what the other tabs need (1024-pixel screens)
        edit, run = QHBoxLayout(), QHBoxLayout()
        for name in ("queueUpButton", "queueDownButton", "queueCancelButton", "queueRemoveButton"):
            edit.addWidget(getattr(self, name))
        edit.addWidget(self.queueClearButton)
        edit.addStretch(1)
        run.addStretch(1)
        run.addWidget(self.queueSweepButton)
        run.addWidget(self.queuePauseButton)
        run.addWidget(self.queueStartButton)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.queueTable, 1)
        layout.addLayout(edit)
        layout.addWidget(self.queueStatusLabel)
        layout.addLayout(run)

    def show_rows(self, rows: list[Any], selected: str | None) -> None:
        table = self.queueTable
        table.blockSignals(True)
        table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            for j, text in enumerate(row.cells()):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, row.job_id)
                item.setToolTip(text)
                table.setItem(i, j, item)
        index = next((i for i, r in enumerate(rows) if r.job_id == selected), -1)
        if index >= 0:
            table.selectRow(index)
        else:
            table.clearSelection()
        table.blockSignals(False)

    def selected_id(self) -> str | None:
        items = self.queueTable.selectedItems()
        return items[0].data(Qt.ItemDataRole.UserRole) if items else None

    def cell(self, row: int, column: str) -> str:
        item = self.queueTable.item(row, COLUMNS.index(column))
        return item.text() if item is not None else ""


class SweepDialog(QDialog):
    """Ranks, methods and bit widths as check boxes; every combination becomes one job."""

    def __init__(self, parent: QWidget, rank: int, method: str, bits: int) -> None:
        from quailora_core.config import METHODS

        super().__init__(parent)
        self.setObjectName("sweepDialog")
        self.setWindowTitle("Add a sweep to the queue")
        self.checks: dict[str, dict[Any, QCheckBox]] = {"ranks": {}, "methods": {}, "bits": {}}
        layout = QVBoxLayout(self)
        for key, title, values, current in (("ranks", "Ranks", sorted({*SWEEP_RANKS, rank}), rank),
                                            ("methods", "Methods", METHODS, method),
                                            ("bits", "Bits", (4, 8), bits)):  # fmt: skip
            box = QGroupBox(title)
            grid = QGridLayout(box)
            for i, value in enumerate(values):
                check = named(QCheckBox(str(value)), f"sweep{key.capitalize()}{str(value).capitalize()}Check")
                check.setChecked(value == current)
                grid.addWidget(check, i // 5, i % 5)
                self.checks[key][value] = check
            layout.addWidget(box)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Add to queue")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def chosen(self) -> tuple[list[int], list[str], list[int]]:
        pick = {key: [v for v, c in boxes.items() if c.isChecked()] for key, boxes in self.checks.items()}
        return pick["ranks"], pick["methods"], pick["bits"]


class QueueControl(QObject):
    """The window's side of the queue: add the form's run or a sweep, reorder, cancel, pause,
    and run the queue in a child process. Signals (GUI thread): `changed(QueueState)` after
    each re-read of the file, `jobEvent(event)` for each event the runner streams,
    `runnerEnded(int exit_code)`."""

    changed = Signal(object)
    jobEvent = Signal(object)
    runnerEnded = Signal(int)

    def __init__(self, window: Any, panel: QueuePanel, queue_path: str | None = None) -> None:
        from quailora_core.jobs.job import QueueState
        from quailora_core.jobs.queue_file import JobQueue

        super().__init__(window)
        self.w, self.panel = window, panel
        self.queue = JobQueue(queue_path)
        self.state = QueueState()
        self.env: dict[str, str] = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        self._label = ""  # the running job's label, for its events' lines
        self._rows: list[Any] = []
        self.process = TrainingProcess(self)
        self.process.process.setObjectName("queueProcess")
        self.process.line.connect(self._on_line)
        self.process.errorLine.connect(self._on_stderr)
        self.process.ended.connect(self._on_ended)
        self.process.startFailed.connect(lambda error: self.w.log(f"The queue could not start: {error}", "error"))

        self.queue.path.parent.mkdir(parents=True, exist_ok=True)
        self.watcher = QFileSystemWatcher([str(self.queue.path.parent)], self)
        self.watcher.directoryChanged.connect(lambda _path: self.refresh())
        self.timer = QTimer(self)
        self.timer.setInterval(REFRESH_MS)
        self.timer.timeout.connect(self.refresh)
        self.timer.start()

        p = panel
        window.addToQueueButton.clicked.connect(lambda: self.add_form_run())
        p.queueStartButton.clicked.connect(lambda: self.start())
        p.queuePauseButton.clicked.connect(lambda: self.toggle_pause())
        p.queueUpButton.clicked.connect(lambda: self.move_selected(-1))
        p.queueDownButton.clicked.connect(lambda: self.move_selected(+1))
        p.queueCancelButton.clicked.connect(lambda: self._change(lambda job_id: self.queue.cancel(job_id)))
        p.queueRemoveButton.clicked.connect(lambda: self._change(lambda job_id: self.queue.remove(job_id)))
        p.queueClearButton.clicked.connect(lambda: self._change(lambda _id: self.queue.clear(), needs_job=False))
        p.queueSweepButton.clicked.connect(lambda: self.ask_sweep())
        p.queueTable.itemSelectionChanged.connect(self._apply_buttons)
        self.refresh()

    # ------------------------------------------------------------------ showing the file
    def refresh(self) -> None:
        from quailora_core.errors import InputError

        try:
            self.state = self.queue.read()
        except (InputError, OSError) as exc:
            self.panel.queueStatusLabel.setText(getattr(exc, "message", str(exc)))
            return
        rows = queue_rows(self.state)
        if rows != self._rows:
            self._rows = rows
            self.panel.show_rows(rows, self.panel.selected_id())
        self.panel.queueStatusLabel.setText(queue_status(self.state, self.running()))
        self._apply_buttons()
        self.changed.emit(self.state)

    def _apply_buttons(self) -> None:
        for name, on in queue_buttons(self.state, self.panel.selected_id(), self.running()).items():
            getattr(self.panel, name).setEnabled(on)
        self.panel.queuePauseButton.setText(pause_text(self.state))

    def running(self) -> bool:
        return self.process.running()

    # ------------------------------------------------------------------ adding
    def add_form_run(self) -> bool:
        """Queue the form's run as an init job; the form moves on to a free output folder."""
        from quailora_core.jobs.build import init_job

        config = self.w.form.to_config()
        return self._add(lambda: [init_job(config)], config.output)

    def add_sweep(self, ranks: list[int], methods: list[str], bits: list[int]) -> bool:
        """Queue the form's run once per rank x method x bits."""
        from quailora_core.jobs.sweep import sweep_jobs

        config = self.w.form.to_config()
        return self._add(lambda: sweep_jobs(config, ranks, methods, bits, self.queue.read().claimed_outputs()), None)

    def ask_sweep(self) -> None:
        config = self.w.form.to_config()
        dialog = SweepDialog(self.w, config.lora.rank, config.init.method, config.quantization.bits)
        dialog.accepted.connect(lambda: self.add_sweep(*dialog.chosen()))
        self.w.keep_dialog(dialog)
        dialog.open()

    def _add(self, make: Any, output: str | None) -> bool:
        from quailora_core.errors import InputError
        from quailora_core.files import next_free_output

        try:
            jobs = self.queue.add(make())
        except InputError as exc:
            self.w.log(f"Not queued: {exc.one_line()}", "warning")
            self.w.keep_dialog(show_input_error(self.w, exc, "Could not add to the queue"))
            return False
        for job in jobs:
            self.w.log(f"Queued {job.label} -> {job.output}")
        if output:  # the next Add (or Run) needs a folder no queued job writes
            self.w.form.outputPathEdit.setText(next_free_output(output, self.queue.read().claimed_outputs()))
        self.refresh()
        return True

    # ------------------------------------------------------------------ changes to the queue
    def move_selected(self, step: int) -> None:
        job_id = self.panel.selected_id()
        if job_id is None:
            return
        index = [j.id for j in self.state.jobs].index(job_id) if job_id in [j.id for j in self.state.jobs] else 0
        self._change(lambda jid: self.queue.move(jid, max(0, index + step)))

    def toggle_pause(self) -> None:
        paused = not self.state.paused
        self._change(lambda _id: self.queue.set_paused(paused), needs_job=False)
        self.w.log("Queue paused: the running job finishes, no other starts." if paused else "Queue resumed.")

    def _change(self, change: Any, needs_job: bool = True) -> None:
        from quailora_core.errors import InputError

        job_id = self.panel.selected_id()
        if needs_job and job_id is None:
            return
        try:
            change(job_id)
        except InputError as exc:  # the job changed meanwhile (it ended, a terminal removed it)
            self.w.log(exc.one_line(), "warning")
        self.refresh()

    # ------------------------------------------------------------------ the runner
    def start(self) -> bool:
        """Run the queue in a child process (un-pausing it); False while a runner holds it."""
        self.refresh()
        if self.running() or self.state.runner is not None:
            return False
        if self.state.paused:
            self.queue.set_paused(False)
        command = runner_command(self.queue.path)
        self.process.start(command, str(self.queue.path.parent), self.env)
        self.w.log(f"Queue started (process {self.process.pid}).")
        self.refresh()
        return True

    def _on_line(self, line: str) -> None:
        from quailora_core.events import JobUpdate

        event = parse_line(line)
        if event is None:
            text = plain_line(line)
            if text is not None:
                self.w.log(f"queue: {text}")
            return
        if isinstance(event, JobUpdate):
            self._label = event.label
            self.refresh()
        said = job_event_text(event, self._label)
        if said is not None:
            self.w.log(said[1], said[0])
        progress = job_progress_text(event, self._label)
        if progress is not None:
            self.w.statusBar().showMessage(progress, 5000)
        self.jobEvent.emit(event)

    def _on_stderr(self, line: str) -> None:
        text = plain_line(line)
        if text is not None:
            self.w.log(f"queue: {text}")

    def _on_ended(self, code: int, crashed: bool) -> None:
        self.w.log(f"Queue runner ended (exit code {code}{', crashed' if crashed else ''}).",
                   "info" if code in (0, 1) and not crashed else "warning")  # fmt: skip
        self.refresh()
        self.runnerEnded.emit(code)

    def shutdown(self, wait_ms: int) -> None:
        """Stop the runner (its job is cancelled cleanly), then kill it if it lingers."""
        self.timer.stop()
        if self.running():
            self.process.stop()
            if not self.process.process.waitForFinished(min(wait_ms, STOP_WAIT_MS)):
                self.process.kill()
                self.process.process.waitForFinished(5_000)

