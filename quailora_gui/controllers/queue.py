"""The Queue tab without Qt: the table's rows from the queue file's jobs, which buttons are
enabled, the runner's command line, and what a queued job's events say in the log.

The app runs the queue the way a terminal does (`python -m quailora_core queue run --json`)
as a child process, and shows the states the queue file holds, so a job added from a
terminal, or a runner started there, shows up in the app as it is.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COLUMNS = ("Label", "Kind", "State", "Output", "Message")
BUTTONS = ("queueStartButton", "queuePauseButton", "queueUpButton", "queueDownButton", "queueCancelButton",
           "queueRemoveButton")  # fmt: skip


@dataclass(frozen=True)
class QueueRow:
    """One job as the table shows it (`job_id` keeps the selection across refreshes)."""

    job_id: str
    label: str
    kind: str
    state: str
    output: str
    message: str

    def cells(self) -> tuple[str, ...]:
        return self.label, self.kind, self.state, self.output, self.message


def queue_rows(state: Any) -> list[QueueRow]:
    """The rows of a `QueueState`, in run order; a running job that was asked to stop reads
    "stopping"."""
    return [QueueRow(j.id, j.label, j.kind, "stopping" if j.state == "cancelling" else j.state, j.output, j.message)
            for j in state.jobs]  # fmt: skip


def queue_buttons(state: Any, selected: str | None, runner_here: bool) -> dict[str, bool]:
    """objectName -> enabled. Start while jobs wait and no runner (here or in a terminal)
    holds the queue; Pause (Resume when paused) always; up / down / cancel / remove by the
    selected job's place and state."""
    ids = [j.id for j in state.jobs]
    job = next((j for j in state.jobs if j.id == selected), None)
    index = ids.index(selected) if job is not None else -1
    waiting = any(j.state == "queued" for j in state.jobs)
    return {
        "queueStartButton": waiting and not runner_here and state.runner is None,
        "queuePauseButton": True,
        "queueUpButton": index > 0,
        "queueDownButton": 0 <= index < len(ids) - 1,
        "queueCancelButton": job is not None and job.state in ("queued", "running"),
        "queueRemoveButton": job is not None and job.state not in ("running", "cancelling"),
    }


def pause_text(state: Any) -> str:
    return "Resume" if state.paused else "Pause"


def queue_status(state: Any, runner_here: bool) -> str:
    """The line under the table: how many jobs wait, and who runs them."""
    waiting = sum(j.state == "queued" for j in state.jobs)
    running = next((j for j in state.jobs if j.state in ("running", "cancelling")), None)
    parts = [f"{waiting} waiting"]
    if running is not None:
        parts.append(f"running: {running.label}")
    if state.paused:
        parts.append("paused: the running job finishes, no other starts")
    if state.runner is not None and not runner_here:
        parts.append(f"run by process {state.runner} (a terminal's `quailora queue run`)")
    return "; ".join(parts) + "."


def runner_command(queue_path: str | Path) -> list[str]:
    """The child the app starts: the command line's runner, on the same queue file."""
    return [sys.executable, "-m", "quailora_core", "queue", "run", "--json", "--queue", str(queue_path)]


def job_event_text(event: Any, label: str) -> tuple[str, str] | None:
    """(level, text) the log shows for an event of the runner, or None (layer and step
    events go to the status line instead: `job_progress_text`)."""
    from quailora_core.events import Failed, JobUpdate, Log

    if isinstance(event, JobUpdate):
        level = {"failed": "error", "cancelled": "warning"}.get(event.state, "info")
        return level, f"Queue: {event.label}: {event.state}" + (f": {event.message}" if event.message else "")
    if isinstance(event, Log):
        return event.level, f"[queue: {label}] {event.message}"
    if isinstance(event, Failed):
        return "error", f"[queue: {label}] {event.message} {event.hint}".strip()
    return None


def job_progress_text(event: Any, label: str) -> str | None:
    """The status-bar line for a running job's progress event, or None."""
    from quailora_core.events import LayerResult, Stage, TrainStep

    if isinstance(event, LayerResult):
        return f"Queue: {label}: layer {event.index + 1} ({event.name})"
    if isinstance(event, TrainStep):
        return f"Queue: {label}: step {event.step} / {event.total_steps}, loss {event.loss:.4g}"
    if isinstance(event, Stage):
        return f"Queue: {label}: {event.name}…"
    return None
