"""Progress of a run (stage, layers done, ETA) derived from the engine's events."""

from __future__ import annotations

import time
from collections.abc import Callable

from quailora_core.events import LayerResult, Stage

from .formatting import fmt_duration

STAGE_TEXT = {
    "load": "Loading the model and calibration text…",
    "calibrate": "Initializing layers…",
    "solve": "Solving…",
    "export": "Writing the adapter…",
    "train": "Training…",
}


class ProgressTracker:
    """Counts layers against the calibrate stage's total and estimates the time left.

    The ETA is the mean time per finished layer times the layers left, measured from the
    start of the calibrate stage (so model loading does not distort it).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        self.stage = ""
        self.total = 0
        self.done = 0
        self.current = ""
        self._stage_start = self._clock()
        self._run_start = self._clock()
        self._layers_start: float | None = None

    def on_event(self, event: object) -> None:
        """Feed any engine event; events that do not concern progress are ignored."""
        if isinstance(event, Stage):
            self.stage = event.name
            self._stage_start = self._clock()
            if event.name == "calibrate":
                self.total = int(event.total)
                self.done = 0
                self._layers_start = self._stage_start
        elif isinstance(event, LayerResult):
            self.done += 1
            self.current = event.name
            if self._layers_start is None:
                self._layers_start = self._run_start

    @property
    def busy(self) -> bool:
        """True while the amount of work is unknown (loading, writing): show a busy bar."""
        return self.stage != "calibrate" or self.total <= 0

    def elapsed(self) -> float:
        return self._clock() - self._run_start

    def eta_seconds(self) -> float | None:
        if self.stage != "calibrate" or not self.done or self._layers_start is None or not self.total:
            return None
        per_layer = (self._clock() - self._layers_start) / self.done
        return per_layer * max(0, self.total - self.done)

    def status_text(self) -> str:
        """One line for the label beside the progress bar."""
        if self.stage == "calibrate" and self.total:
            if self.current:
                return f"Layer {self.done} of {self.total}: {self.current}"
            return f"Layer 0 of {self.total}: capturing the first block's inputs…"
        return STAGE_TEXT.get(self.stage, "Starting…" if not self.stage else f"{self.stage}…")

    def eta_text(self) -> str:
        eta = self.eta_seconds()
        elapsed = fmt_duration(self.elapsed())
        if eta is None:
            return f"elapsed {elapsed}"
        return f"elapsed {elapsed} · about {fmt_duration(eta)} left"


def merge_event_text(event: object) -> str:
    """The log line for an event of a merge (each merged block, the engine's log lines); ''
    for events the log does not show."""
    from quailora_core.events import Log, Progress, Stage

    if isinstance(event, Progress):
        return f"Merging: {event.what}"
    if isinstance(event, Log):
        return event.message
    if isinstance(event, Stage) and event.name == "verify":
        return "Merging: checking the merged weights against bitsandbytes…"
    return ""


class MergeGgufText:
    """The log lines of a merge then GGUF export (`merge_to_gguf`): the merge's as
    `merge_event_text` words them, then the GGUF step's (its Stage "export" starts it, and its
    "verify" is the file's read-back, not the merge's self-check)."""

    def __init__(self) -> None:
        self.gguf = False

    def __call__(self, event: object) -> str:
        from quailora_core.events import Stage

        if isinstance(event, Stage) and event.name == "export":
            self.gguf = True
            return "GGUF: writing the merged model's tensors…"
        if self.gguf and isinstance(event, Stage) and event.name == "verify":
            return "GGUF: reading the file back and checking it against the merged folder…"
        return merge_event_text(event)
