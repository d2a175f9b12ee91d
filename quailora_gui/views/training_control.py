"""Fine-tuning from the window: Launch (export the run folder, then train it in a child
process), Stop, Resume, the child's events on the Training tab, and its end.

The child's stdout carries the trainer's JSON events (`controllers.training.parse_line`);
they are dispatched by their class. Its start, stop and end are the state machine's
training phase.
"""

from __future__ import annotations

import shlex
from html import escape
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer

from quailora_core.events import EvalResult, Failed, Finished, Log, RankProgress, Stage, TrainStep

from ..controllers.app_state import Action, Export, Phase
from ..controllers.formatting import fmt_duration
from ..controllers.paths import is_free_output, next_free_output
from ..controllers.training import (
    TRAIN_OUTPUT,
    Outcome,
    TrainingState,
    has_checkpoint,
    installed_trackers,
    launch_plan,
    parse_line,
    plain_line,
    resume_blocker,
    source_error,
    train_command,
    training_config,
    with_train_settings,
)
from ..controllers.wording import app_words
from .dialogs import show_failure
from .training_view import TrainingPanel, TrainingProcess

CLOCK_MS = 1000


class TrainingControl(QObject):
    def __init__(self, window: Any, panel: TrainingPanel) -> None:
        super().__init__(window)
        self.w, self.panel = window, panel
        self.training = TrainingState()
        self.run_dir: str | None = None  # the run folder of the last launch (Resume trains it)
        self.processes = 1  # training processes of the last Launch or Resume (launch_plan)
        # added to the child's environment (tests pin OMP_NUM_THREADS=1)
        self.env: dict[str, str] = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.process = TrainingProcess(self)
        self.process.line.connect(self._on_line)
        self.process.errorLine.connect(self._on_stderr)
        self.process.ended.connect(self._on_ended)
        self.process.startFailed.connect(self._on_start_failed)
        self._clock = QTimer(self)
        self._clock.setInterval(CLOCK_MS)
        self._clock.timeout.connect(self.update_progress)
        self._handlers = {TrainStep: self._on_step, RankProgress: self._on_ranks, EvalResult: self._on_eval,
                          Stage: self._on_stage, Log: self._on_log, Finished: self._on_finished,
                          Failed: self._on_failed}  # fmt: skip
        panel.exportRunButton.clicked.connect(lambda: window.export_run())
        panel.launchTrainingButton.clicked.connect(lambda: self.launch())
        panel.stopTrainingButton.clicked.connect(lambda: self.stop())
        panel.resumeTrainingButton.clicked.connect(lambda: self.resume())
        panel.trainOutputEdit.textChanged.connect(lambda _text: self.sync())
        # the data paths are checked as they change (the core's check that Launch meets too)
        panel.trainDataEdit.textChanged.connect(lambda text: self.check_source("train.data", text))
        panel.validationDataEdit.textChanged.connect(lambda text: self.check_source("train.validation_data", text))
        window.engineReady.connect(lambda: panel.set_installed_trackers(installed_trackers()))
        self.check_source("train.data", panel.trainDataEdit.text())
        panel.maxStepsSpin.valueChanged.connect(lambda _value: self.sync())  # Resume continues up to it
        panel.epochsSpin.valueChanged.connect(lambda _value: self.sync())
        self._resume_tip = panel.resumeTrainingButton.toolTip()

    def check_source(self, field: str, text: str) -> str:
        """Show why the training or validation data cannot be used under its field ("" when it can)."""
        error = source_error(text, field)
        self.panel.show_source_error(field, error)
        return error

    # ------------------------------------------------------------------ the run file's [train]
    def run_config(self, config: Any) -> Any:
        """`config` with the Training tab's settings as its [train] section (File > Save run, the
        settings remembered between sessions)."""
        return with_train_settings(config, self.panel.settings())

    def show_settings(self, config: Any) -> None:
        """Show an opened or remembered run's [train] settings on the Training tab."""
        self.panel.set_settings(config.train)

    def sync(self) -> None:
        """Tell the state what the panel and the disk say: an output folder, a checkpoint
        below Max steps (the Resume button's tooltip says why not, otherwise)."""
        p = self.panel
        why = resume_blocker(self.run_dir, p.maxStepsSpin.value(), p.epochsSpin.value())
        p.resumeTrainingButton.setToolTip(why or self._resume_tip)
        self.w.state.note(train_output=bool(p.trainOutputEdit.text().strip()), resumable=not why)

    def resume_from(self, run_dir: str, train: Any) -> None:
        """A training run of the history (after a restart): Resume continues it; the panel
        shows its settings (Max steps from its run file)."""
        self.run_dir = run_dir
        self.panel.set_settings(train)
        self.panel.trainStatusLabel.setText(f"Resume continues <code>{escape(run_dir)}</code>")
        self.sync()

    def show_source(self, run: Any) -> None:
        """The finished run whose adapter Export run / Launch train; a free output folder for it."""
        p = self.panel
        p.adapterLabel.setText(f"Trains the adapter of <b>{escape(run.name)}</b><br><code>{escape(run.output_dir)}</code>")
        if run.config.train.data:
            p.set_settings(run.config.train)
        out = p.trainOutputEdit.text().strip()
        if not out or not is_free_output(out) or self.run_dir == out:
            p.trainOutputEdit.setText(next_free_output(run.output_dir + "-training"))
        self.sync()

    def training_config(self) -> Any:
        run = self.w.results_area.displayed
        return training_config(run.config, run.output_dir, self.panel.settings())

    # ------------------------------------------------------------------ launch, resume, stop
    def launch(self) -> bool:
        """Export the run into the output folder (files lane), then train it there in a child
        process. Returns whether the export started."""
        self.sync()
        if not self.w.state.enabled(Action.LAUNCH):
            return False
        out = self.panel.trainOutputEdit.text().strip()
        if not self._plan():
            return False
        self.w.exports.run_folder(Export.LAUNCH, out, self._on_exported, "Cannot launch the training")
        return True

    def _plan(self) -> bool:
        """How many processes Launch and Resume start, from the run kind, Processes and this
        machine's GPUs; a run that cannot start here is said before anything is written."""
        p = self.panel
        plan = launch_plan(p.runKindCombo.currentData(), p.trainProcessesSpin.value(), self.w.checks.gpus)
        if plan.problem:
            p.trainStatusLabel.setText(escape(plan.problem))
            self.w.log(f"Cannot launch the training: {plan.problem}", "error")
            self.w.launchRefused.emit(plan.problem)
            return False
        if plan.warning:
            self.w.log(plan.warning, "warning")
        if plan.note:
            self.w.log(plan.note)
        self.processes = plan.processes
        return True

    def _on_exported(self, run_dir: Path) -> None:
        if self.w.state.running:  # an initialization was started while the folder was being copied
            self.w.log(f"Run exported to {run_dir}; not launched while an initialization runs.", "warning")
            return
        self.w.log(f"Run exported to {run_dir}")
        self.training.reset()
        self.panel.show_state(self.training)
        self._start(str(run_dir), resume=False)

    def resume(self) -> bool:
        """Continue the last launched run from its newest checkpoint (the step count goes on)."""
        self.sync()
        if not self.w.state.enabled(Action.RESUME) or not self._plan():
            return False
        self._start(self.run_dir, resume=True)
        return True

    def _start(self, run_dir: str, resume: bool) -> None:
        w = self.w
        settings = self.panel.settings()
        max_steps = settings["max_steps"] if resume and not settings["epochs"] else None
        command, env = train_command(run_dir, resume, max_steps, self.processes)
        self.run_dir = run_dir
        self.training.begin()
        w.state.start_training()
        w.progressPanel.set_busy("Starting the training process…")
        w.progressPanel.etaLabel.setText("")
        self.panel.trainStatusLabel.setText(f"Training in <code>{run_dir}</code>")
        shown = " ".join(f"{k}={shlex.quote(env[k])}" for k in ("NUM_PROCESSES",) if k in env)
        w.log(("Resuming" if resume else "Training") + f": {shown + ' ' if shown else ''}{shlex.join(command)}")
        self._clock.start()
        self.process.start(command, run_dir, {**self.env, **env})
        if w.state.training:
            w.log(f"Training process {self.process.pid} started.")
            w.trainingStarted.emit(run_dir)

    def stop(self) -> None:
        if not self.w.state.enabled(Action.STOP):
            return
        self.process.stop()
        self.w.state.stop()
        self.w.progressPanel.currentLayerLabel.setText("Stopping at the end of the current step…")
        self.w.log("Stop requested: the trainer saves a checkpoint at the end of the current step.")

    # ------------------------------------------------------------------ the child's output
    def _on_line(self, line: str) -> None:
        event = parse_line(line)
        if event is None:
            text = plain_line(line)
            if text is not None:
                self.w.log(f"training: {text}")
            return
        self.training.on_event(event)
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def _on_step(self, event: TrainStep) -> None:
        self.panel.show_state(self.training)
        self.update_progress()
        self.w.trainingStep.emit(event)

    def _on_ranks(self, event: RankProgress) -> None:
        """Several processes only (a single-process run sends none): the table of the step just
        logged, and the ranks the launcher started, remembered to be ended with it (kill)."""
        self.process.note_family()
        self.panel.rankTable.show_rows(self.training.rank_rows())
        self.w.rankProgress.emit(event)

    def _on_eval(self, event: EvalResult) -> None:
        self.panel.show_state(self.training)
        self.w.log(f"Validation at step {event.step}: loss {event.loss:.4g}, perplexity {event.perplexity:.4g}")

    def _on_stage(self, event: Stage) -> None:
        if event.name == "export":
            self.w.progressPanel.currentLayerLabel.setText("Writing the trained adapter…")

    def _on_log(self, event: Log) -> None:
        self.w.log(event.message, event.level)

    def _on_finished(self, event: Finished) -> None:
        self.w.log(f"Trained adapter written to {Path(event.output_dir) / 'adapter'}")

    def _on_failed(self, event: Failed) -> None:
        # after the user's Stop the child ends with a Failed "cancelled" event: not an error,
        # and the end's "Training stopped at step N" line says it once (_on_ended)
        if not self.process.stop_requested:
            self.w.log(app_words(f"{event.message} {event.hint}".strip()), "error")

    def _on_stderr(self, line: str) -> None:
        text = self.training.on_stderr(line)
        # after a Stop the child's stderr only reports that stop ("stopping at the next step",
        # its last "error: ... cancelled" line): kept for the outcome, not repeated in the log
        if text is not None and not self.process.stop_requested:
            self.w.log(f"training: {text}")

    def update_progress(self) -> None:
        if self.w.state.phase is not Phase.TRAINING:  # not while stopping
            return
        t = self.training
        if t.steps:
            self.w.progressPanel.set_progress(t.step, t.total_steps, t.status_text(), t.eta_text(), "steps")
        else:
            self.w.progressPanel.etaLabel.setText(t.eta_text())

    # ------------------------------------------------------------------ the end
    def _on_ended(self, code: int, crashed: bool) -> None:
        if not self.w.state.training:
            return
        w, run_dir = self.w, self.run_dir or ""
        checkpoint = str(Path(run_dir) / TRAIN_OUTPUT) if has_checkpoint(run_dir) else ""
        outcome = self.training.outcome(code, crashed, self.process.stop_requested, checkpoint)
        self._end()
        t = self.training
        self.panel.trainStatusLabel.setText(f"{outcome.message} {outcome.hint}".strip())
        w.progressPanel.set_idle(outcome.message, t.step, t.total_steps, "steps")
        w.progressPanel.etaLabel.setText(f"elapsed {fmt_duration(t.elapsed())}")
        if outcome.kind == "finished":
            w.log(f"{outcome.message} Results in {Path(run_dir) / TRAIN_OUTPUT}")
            if outcome.hint:
                w.log(outcome.hint)
            w.trainingFinished.emit(outcome)
        elif outcome.kind == "stopped":
            w.log(f"{outcome.message} {outcome.hint}")  # the user's own Stop: news, not a warning
            w.trainingStopped.emit(outcome)
        else:
            w.log(f"Training failed: {outcome.message} {outcome.hint}".strip(), "error")
            w.keep_dialog(show_failure(w, outcome, "Training failed"))
            w.trainingFailed.emit(outcome)

    def _on_start_failed(self, error: str) -> None:
        if not self.w.state.training:
            return
        self._end()
        outcome = Outcome("failed", f"The training process could not be started: {error}", "")
        self.w.progressPanel.set_idle(outcome.message)
        self.w.log(outcome.message, "error")
        self.w.keep_dialog(show_failure(self.w, outcome, "Training failed"))
        self.w.trainingFailed.emit(outcome)

    def _end(self) -> None:
        self._clock.stop()
        self.panel.show_state(self.training)
        out = self.panel.trainOutputEdit.text().strip()
        if out and not is_free_output(out) and Path(out).resolve() == Path(self.run_dir or "").resolve():
            self.panel.trainOutputEdit.setText(next_free_output(out))  # the next Launch needs a free one
        self.w.state.end_training()
        self.sync()

    def shutdown(self, wait_ms: int) -> None:
        """The trainer checkpoints at the step end; then it is killed."""
        self._clock.stop()
        if self.process.running():
            self.process.stop()
            if not self.process.process.waitForFinished(min(wait_ms, 15_000)):
                self.process.kill()
                self.process.process.waitForFinished(5_000)
