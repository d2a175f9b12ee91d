"""The application's state machine: what the window is doing now and which actions that allows.

One object replaces the loose flags the window used to keep (`running`, `training_active`,
`exporting`, the checker's generation counter). It has three parts:

- the *phase*, one at a time: idle, running (an initialization), cancelling, evaluating
  (`quailora eval` of a run), cancelling it, training (the child process), stopping, closed;
  the initialization and the evaluation share the engine lane, so one excludes the other; `TRANSITIONS` lists the allowed moves;
- the *export* under way, if any (an adapter copy, a run folder, the run folder Launch
  trains in): it overlaps with the phase, since Run stays allowed while a folder is copied
  and an adapter can be exported while a training runs, as before;
- the *checks* of the form: checking (no report for the current settings yet), passed,
  failed; each check gets a generation number and a report of an older one is stale.

`enabled(action)` says which of the window's actions (Run, Cancel, Export adapter, Export
run, Launch, Stop, Resume, Open run, ...) the state allows; `run_status()` is the line
beside Run. An illegal move raises `TransitionError`: the views ask `enabled` first, so a
raise is a bug, never a user's click. Views subscribe to changes (`subscribe(callback)`),
in the spirit of napari's evented models: every change calls each callback with the state.
Plain Python: no Qt, no core import.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

from .form_fields import ERROR_KEYS


class Phase(Enum):
    IDLE = "idle"
    RUNNING = "running"  # an initialization runs in the engine thread
    CANCELLING = "cancelling"  # Cancel was asked: the engine stops after the current layer
    EVALUATING = "evaluating"  # `quailora eval` of a run in the history runs in the engine thread
    EVAL_CANCELLING = "cancelling the evaluation"  # Cancel was asked: it stops after the current batch
    TRAINING = "training"  # the training child process runs
    STOPPING = "stopping"  # Stop was asked: the trainer checkpoints at the end of the step
    CLOSED = "closed"  # the window shut down: nothing more is shown


class Export(Enum):
    """What the files thread is writing."""

    ADAPTER = "adapter"  # Export adapter: a copy of the shown run's adapter
    RUN = "run"  # Export run: a self-contained run folder
    LAUNCH = "launch"  # the run folder Launch then trains in
    MERGED = "merged model"  # Export merged model: the base with the adapter merged in, for serving
    GGUF = "GGUF file"  # Export GGUF: the merged model, then its GGUF file for llama.cpp


class Checks(Enum):
    CHECKING = "checking"  # the settings changed and their report has not come back yet
    PASSED = "passed"
    FAILED = "failed"


class Action(Enum):
    RUN = "run"
    CANCEL = "cancel"
    EXPORT_ADAPTER = "export adapter"
    EXPORT_MERGED = "export merged model"
    EXPORT_GGUF = "export gguf"
    EXPORT_CHARTS = "export charts"
    EXPORT_CSV = "export csv"
    EXPORT_RUN = "export run"
    LAUNCH = "launch"
    STOP = "stop"
    RESUME = "resume"
    OPEN_RUN = "open run"  # File > Open run, or a run file dropped on the window
    SAVE_RUN = "save run"
    DROP_INPUT = "drop input"  # a model folder or calibration data dropped on the window
    EDIT_FORM = "edit form"
    EDIT_TRAINING = "edit training settings"
    REOPEN = "reopen a run"  # show a run of the history (its charts, its adapter to export and train)
    EVALUATE = "evaluate"  # the perplexity table of `quailora eval`, in the engine lane


# The form's error keys (top to bottom) as the status line names them.
FIELD_NAMES = {"model": "the model", "targets": "the target modules", "calibration": "the calibration data",
               "text_column": "the text column", "sizes": "the calibration sizes", "quantization": "the quantization",
               "lora": "the LoRA settings", "method": "the method", "device": "the device",
               "output": "the output folder", "general": "the settings"}  # fmt: skip


class TransitionError(RuntimeError):
    """A move the state machine does not allow from where it is."""


# phase -> {event: next phase}. Every other (phase, event) pair is illegal.
TRANSITIONS: dict[Phase, dict[str, Phase]] = {
    Phase.IDLE: {"start_run": Phase.RUNNING, "start_training": Phase.TRAINING, "start_eval": Phase.EVALUATING,
                 "close": Phase.CLOSED},
    Phase.RUNNING: {"cancel": Phase.CANCELLING, "end_run": Phase.IDLE, "close": Phase.CLOSED},
    Phase.CANCELLING: {"end_run": Phase.IDLE, "close": Phase.CLOSED},
    Phase.EVALUATING: {"cancel": Phase.EVAL_CANCELLING, "end_eval": Phase.IDLE, "close": Phase.CLOSED},
    Phase.EVAL_CANCELLING: {"end_eval": Phase.IDLE, "close": Phase.CLOSED},
    Phase.TRAINING: {"stop": Phase.STOPPING, "end_training": Phase.IDLE, "close": Phase.CLOSED},
    Phase.STOPPING: {"end_training": Phase.IDLE, "close": Phase.CLOSED},
    Phase.CLOSED: {},
}
# the action a move needs enabled, beyond the phase allowing it
GUARDS: dict[str, Action] = {"start_run": Action.RUN, "cancel": Action.CANCEL, "stop": Action.STOP,
                             "start_eval": Action.EVALUATE}
FACTS = ("has_run", "has_results", "train_output", "resumable")
EXPORT_ACTIONS: dict[Export, Action] = {
    Export.ADAPTER: Action.EXPORT_ADAPTER,
    Export.RUN: Action.EXPORT_RUN,
    Export.LAUNCH: Action.LAUNCH,
    Export.MERGED: Action.EXPORT_MERGED,
    Export.GGUF: Action.EXPORT_GGUF,
}


class AppState:
    """The window's state. Facts the views know (a finished run is shown, the training
    output folder is filled in, a checkpoint to resume from exists) are set with `note`."""

    def __init__(self) -> None:
        self.phase = Phase.IDLE
        self.exporting: Export | None = None
        self.report: Any | None = None  # controllers.checks.CheckReport of the current settings
        self.generation = 0  # of the latest check asked for
        self.has_run = False  # a finished run is shown (its adapter can be exported and trained)
        self.has_results = False  # layers are shown (charts and CSV can be exported)
        self.train_output = False  # the training output folder is filled in
        self.resumable = False  # the last launched run folder holds a checkpoint
        self._subscribers: list[Callable[[AppState], None]] = []

    # ------------------------------------------------------------------ events
    def subscribe(self, callback: Callable[[AppState], None]) -> Callable[[], None]:
        """Call `callback(state)` after every change; returns the function that unsubscribes."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def _changed(self) -> None:
        for callback in list(self._subscribers):
            callback(self)

    # ------------------------------------------------------------------ phases
    def can(self, event: str) -> bool:
        """Whether the move `event` (start_run, cancel, end_run, ...) is allowed now."""
        if event not in TRANSITIONS[self.phase]:
            return False
        if event == "start_training" and self.exporting is not None:
            return False
        guard = GUARDS.get(event)
        return guard is None or self.enabled(guard)

    def move(self, event: str) -> Phase:
        """Make the move `event`; raises TransitionError when it is not allowed now."""
        if not self.can(event):
            raise TransitionError(f"cannot {event.replace('_', ' ')} while {self.describe()}")
        self.phase = TRANSITIONS[self.phase][event]
        self._changed()
        return self.phase

    def start_run(self) -> None:
        self.move("start_run")

    def cancel(self) -> None:
        self.move("cancel")

    def end_run(self) -> None:
        self.move("end_run")

    def start_training(self) -> None:
        self.move("start_training")

    def start_eval(self) -> None:
        self.move("start_eval")

    def end_eval(self) -> None:
        self.move("end_eval")

    def stop(self) -> None:
        self.move("stop")

    def end_training(self) -> None:
        self.move("end_training")

    def close(self) -> None:
        """Shut down (from any phase; closing twice is a no-op)."""
        if self.phase is not Phase.CLOSED:
            self.move("close")

    # ------------------------------------------------------------------ exports
    def begin_export(self, kind: Export) -> None:
        if not self.enabled(EXPORT_ACTIONS[kind]):
            raise TransitionError(f"cannot export the {kind.value} while {self.describe()}")
        self.exporting = kind
        self._changed()

    def end_export(self) -> None:
        if self.exporting is None:
            raise TransitionError("no export is under way")
        self.exporting = None
        self._changed()

    # ------------------------------------------------------------------ checks
    @property
    def checks(self) -> Checks:
        if self.report is None:
            return Checks.CHECKING
        return Checks.PASSED if self.report.ok else Checks.FAILED

    def settings_changed(self) -> None:
        """The form changed: its last report no longer applies."""
        self.report = None
        self._changed()

    def new_check(self) -> int:
        """The generation of a check about to be asked for (newer than every earlier one)."""
        if self.phase is Phase.CLOSED:
            raise TransitionError("cannot check the settings after closing")
        self.generation += 1
        return self.generation

    def take_report(self, report: Any) -> bool:
        """Keep `report` if it answers the latest check; False (dropped) when it is stale."""
        if self.phase is Phase.CLOSED or report.generation != self.generation:
            return False
        self.report = report
        self._changed()
        return True

    # ------------------------------------------------------------------ facts
    def note(self, **facts: bool) -> None:
        """Update facts the views know: has_run, has_results, train_output, resumable."""
        for name, value in facts.items():
            if name not in FACTS:
                raise AttributeError(f"AppState has no fact {name!r}")
            setattr(self, name, bool(value))
        self._changed()

    # ------------------------------------------------------------------ what it allows
    @property
    def running(self) -> bool:
        """An initialization runs (cancelled or not)."""
        return self.phase in (Phase.RUNNING, Phase.CANCELLING)

    @property
    def evaluating(self) -> bool:
        """An evaluation runs (cancelled or not)."""
        return self.phase in (Phase.EVALUATING, Phase.EVAL_CANCELLING)

    @property
    def training(self) -> bool:
        """The training process runs (stopping or not)."""
        return self.phase in (Phase.TRAINING, Phase.STOPPING)

    def enabled(self, action: Action) -> bool:
        phase = self.phase
        if phase is Phase.CLOSED:
            return False
        idle = phase is Phase.IDLE
        free = idle and self.exporting is None  # nothing runs and nothing is written
        rules = {
            Action.RUN: idle and self.checks is Checks.PASSED,
            Action.CANCEL: phase in (Phase.RUNNING, Phase.EVALUATING),
            Action.EXPORT_ADAPTER: self.has_run and not self.running and self.exporting is None,
            Action.EXPORT_MERGED: self.has_run and not self.running and self.exporting is None,
            Action.EXPORT_GGUF: self.has_run and not self.running and self.exporting is None,
            Action.EXPORT_CHARTS: self.has_results and not self.running,
            Action.EXPORT_CSV: self.has_results and not self.running,
            Action.EXPORT_RUN: self.has_run and free,
            Action.LAUNCH: self.has_run and free and self.train_output,
            Action.STOP: phase is Phase.TRAINING,
            Action.RESUME: free and self.resumable,
            Action.OPEN_RUN: not self.running,
            Action.SAVE_RUN: True,
            Action.DROP_INPUT: not self.running,
            Action.EDIT_FORM: idle,
            Action.EDIT_TRAINING: not self.training,
            Action.REOPEN: not self.running and not self.training and self.exporting is None,
            Action.EVALUATE: idle,
        }
        return rules[action]

    def actions(self) -> frozenset[Action]:
        """Every action enabled now."""
        return frozenset(a for a in Action if self.enabled(a))

    def blockers(self) -> dict[str, str]:
        """Why the checks keep Run disabled: field -> reason (empty when they passed)."""
        if self.report is None:
            return {"pending": "The settings are being checked."}
        return dict(self.report.errors)

    def run_status(self) -> str:
        """The line beside Run."""
        if self.running:
            return "Running…"
        if self.training:
            return "Training is running (see the Training tab)."
        if self.evaluating:
            return "Evaluating (see the History tab)…"
        if self.report is None:
            return "Checking the settings…"
        if self.report.ok:
            return "Ready to run."
        key, _reason = self.first_blocker()
        where = FIELD_NAMES.get(key, "the settings")
        n = len(self.report.errors)
        more = "" if n == 1 else f" (and {n - 1} more problem{'s' if n > 2 else ''})"
        return f"Fix {where}{more}: click here to show it."

    def first_blocker(self) -> tuple[str, str]:
        """The field the first problem is about and its reason (("", "") when nothing blocks Run);
        the order is the form's, top to bottom, so the status line names the first one to fix."""
        errors = self.report.errors if self.report is not None else {}
        for key in sorted(errors, key=lambda k: ERROR_KEYS.index(k) if k in ERROR_KEYS else len(ERROR_KEYS)):
            return key, errors[key]
        return "", ""

    def describe(self) -> str:
        text = self.phase.value
        return f"{text}, exporting the {self.exporting.value}" if self.exporting else text
