"""An initialization run, seen from the window: start it in the engine lane, take its events
(live layers, stages, log lines), show its progress, cancel it, and its end.

The engine runs through the task runner (`controllers.tasks.init_task`): no engine or library
code runs on the GUI thread, which only receives the engine's small event records. Events
are dispatched by their class.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, QTimer

from quailora_core.events import Failed, Finished, LayerResult, Log, Stage

from ..controllers.app_state import Action
from ..controllers.formatting import fmt_duration
from ..controllers.paths import is_free_output, next_free_output
from ..controllers.progress import ProgressTracker
from ..controllers.tasks import init_task
from .dialogs import show_failure

CLOCK_MS = 500  # the elapsed time and ETA are redrawn this often


class InitRun(QObject):
    def __init__(self, window: Any, engine: Any = None) -> None:
        super().__init__(window)
        self.w = window
        self.engine = engine
        self.tracker = ProgressTracker()
        self.handle: Any = None  # the TaskHandle of the run under way
        self.config: Any = None  # the RunConfig it runs
        self.previous: Any = None  # the finished run shown before it: shown again if it ends without one
        self._clock = QTimer(self)
        self._clock.setInterval(CLOCK_MS)
        self._clock.timeout.connect(self.update_progress)
        self._handlers = {LayerResult: self._on_layer, Stage: self._on_stage, Log: self._on_log,
                          Finished: self._on_finished_event, Failed: self._on_failed_event}  # fmt: skip

    # ------------------------------------------------------------------ start, cancel
    def start(self) -> bool:
        w = self.w
        if not w.state.enabled(Action.RUN):
            return False
        config = self.config = w.form.to_config()
        w.prefs.save_last_config(config)
        w.remember_model(config.model.path)
        w.remember_calibration(config.calibration.source)
        self.previous = w.results_area.displayed
        w.results_area.clear()
        w.state.note(has_run=False, has_results=False)
        w.state.start_run()
        self.tracker.reset()
        w.progressPanel.set_busy("Starting…")
        w.progressPanel.etaLabel.setText("")
        w.log(
            f"Run started: {config.init.method}, rank {config.lora.rank}, {config.quantization.bits}-bit, "
            f"model {config.model.path}, writing to {config.output}"
        )
        task = init_task(config, self.engine, on_event=self._on_event, on_done=self._on_succeeded,
                         on_failed=self._on_failed, on_cancelled=self._on_cancelled)  # fmt: skip
        self._clock.start()
        self.handle = w.tasks.start(task)  # the window's runStarted fires before the engine starts
        return True

    def cancel(self) -> bool:
        w = self.w
        if not w.state.enabled(Action.CANCEL):
            return False
        self.handle.cancel()
        w.state.cancel()
        w.progressPanel.currentLayerLabel.setText("Cancelling after the current layer…")
        w.log("Cancel requested: the engine stops after the current layer.", "warning")
        return True

    def stop(self) -> None:
        self._clock.stop()

    # ------------------------------------------------------------------ events
    def _on_event(self, event: Any) -> None:
        self.tracker.on_event(event)
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def _on_layer(self, event: LayerResult) -> None:
        self.w.results_area.add_layer(event)
        self.update_progress()
        self.w.layerReceived.emit(event)

    def _on_stage(self, event: Stage) -> None:
        self.w.log(f"Stage: {event.name}" + (f" ({event.total} layers)" if event.total else ""))
        if event.name == "calibrate" and event.total:
            report = self.w.state.report
            summary = report.summary if report is not None else None
            self.w.results_area.expect_layers(event.total, getattr(summary, "n_blocks", 0))
        self.update_progress()

    def _on_log(self, event: Log) -> None:
        self.w.log(event.message, event.level)

    def _on_finished_event(self, event: Finished) -> None:
        self.w.log(f"Adapter written to {event.output_dir}")

    def _on_failed_event(self, event: Failed) -> None:
        self.w.log(f"{event.message} {event.hint}", "error")

    def update_progress(self) -> None:
        if not self.w.state.running:
            return
        t, panel = self.tracker, self.w.progressPanel
        if t.busy:
            panel.set_busy(t.status_text())
            panel.etaLabel.setText(t.eta_text())
        else:
            panel.set_progress(t.done, t.total, t.status_text(), t.eta_text())

    # ------------------------------------------------------------------ the end
    def _end(self, has_run: bool) -> None:
        """The run is over; one that wrote nothing (cancelled, failed) gives the window back
        the finished run shown before it, with its exports, Launch and Compare."""
        w = self.w
        self.handle = None
        self._clock.stop()
        if not has_run and self.previous is not None:
            w.results_area.show_run(self.previous)
            has_run = True
        self.previous = None
        w.results_area.refresh(everything=True)
        w.state.note(has_run=has_run, has_results=len(w.results_area.results) > 0)
        w.state.end_run()

    def _on_succeeded(self, result: Any) -> None:
        w, config = self.w, self.config
        run = w.results_area.add_finished(config, result)
        w.training_control.show_source(run)
        self._end(has_run=True)
        total = len(result.layers)
        checked = result.summary.get("verified_layers") or 0
        check = f" Self-check passed on {checked} layers." if checked else " Self-check was off."
        w.progressPanel.set_idle(
            f"Finished {run.name}: {total} layers in {fmt_duration(self.tracker.elapsed())}.{check}", total, total
        )
        w.progressPanel.etaLabel.setText("")
        w.log(f"Finished {run.name}: adapter in {result.output_dir}")
        # The next run needs a free folder: move on to adapter-2, -3, ...
        if config.output and not is_free_output(config.output) and not config.overwrite:
            nxt = next_free_output(config.output)
            w.form.outputPathEdit.setText(nxt)
            w.log(f"The next run will write to {nxt}")
        w.save_settings()  # a window that is killed later still starts from these settings
        w.request_check()
        w.runFinished.emit(result)
        w.runEnded.emit("finished")

    def _on_failed(self, failed: Any) -> None:
        w = self.w
        self._end(has_run=False)
        w.progressPanel.set_idle(f"Failed: {failed.message}")
        w.log(f"{failed.message} {failed.hint}".strip(), "error")
        w.keep_dialog(show_failure(w, failed))
        w.request_check()
        w.runFailed.emit(failed)
        w.runEnded.emit("failed")

    def _on_cancelled(self) -> None:
        w = self.w
        done = len(w.results_area.results)
        self._end(has_run=False)
        w.progressPanel.set_idle(f"Cancelled after {done} layers; nothing was written.")
        w.progressPanel.etaLabel.setText("")
        w.log("Run cancelled; nothing was written to disk.", "warning")
        w.request_check()
        w.runCancelled.emit()
        w.runEnded.emit("cancelled")
