"""The one task runner: every background job of the window runs through it.

`TaskRunner.start(task)` runs a `controllers.tasks.Task` in its lane's thread (lanes: the
engine, the checks, the files; each a long-lived QThread, named runThread, checkThread and
exportThread, running its tasks one after another) and returns its `TaskHandle`.

Events cross threads only through queued signals: the handle, a QObject of the GUI thread,
emits its signals from the worker thread (`event` for each partial result, then exactly one
of `succeeded`, `failed`, `cancelled` or `skipped`), and its own slots receive them queued,
on the GUI thread, where they call the task's callbacks. A handle that was superseded, or
whose runner shut down, delivers nothing more.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

from ..controllers.tasks import (
    CANCELLED,
    CHECKS,
    DONE,
    ENGINE,
    FAILED,
    FILES,
    Task,
    TaskContext,
    deliver,
    execute,
)

THREAD_NAMES = {ENGINE: "runThread", CHECKS: "checkThread", FILES: "exportThread"}
QUEUED = Qt.ConnectionType.QueuedConnection


class TaskHandle(QObject):
    """One started task. `cancel()` is thread-safe (the job polls `context.token`)."""

    event = Signal(object)  # a partial result, emitted in the worker thread
    succeeded = Signal(object)
    failed = Signal(object, str)  # the exception and its traceback
    cancelled = Signal()
    skipped = Signal()  # superseded before it started: the job never ran
    ended = Signal(object)  # this handle, on the GUI thread, after its outcome was delivered

    def __init__(self, task: Task) -> None:
        super().__init__()
        self.task = task
        self.context = TaskContext(emit=self.event.emit)
        self.dropped = False  # superseded, or the runner shut down: deliver nothing more
        self.done = False
        self.event.connect(self._on_event, QUEUED)
        self.succeeded.connect(self._on_succeeded, QUEUED)
        self.failed.connect(self._on_failed, QUEUED)
        self.cancelled.connect(self._on_cancelled, QUEUED)
        self.skipped.connect(self._end, QUEUED)

    def cancel(self) -> None:
        self.context.token.cancel()

    # ------------------------------------------------------------------ GUI thread
    @Slot(object)
    def _on_event(self, item: Any) -> None:
        if not self.dropped and not self.done:
            self.task.on_event(item)

    @Slot(object)
    def _on_succeeded(self, result: Any) -> None:
        self._outcome((DONE, result))

    @Slot(object, str)
    def _on_failed(self, exc: Any, details: str) -> None:
        self._outcome((FAILED, (exc, details)))

    @Slot()
    def _on_cancelled(self) -> None:
        self._outcome((CANCELLED, None))

    def _outcome(self, outcome: tuple[str, Any]) -> None:
        self.done = True
        try:
            if not self.dropped:
                deliver(self.task, outcome)
        finally:
            self._end()

    @Slot()
    def _end(self) -> None:
        self.done = True
        self.ended.emit(self)


class _Lane(QObject):
    """Lives in its own QThread and runs the handles it is sent, one after another."""

    submit = Signal(object)

    def __init__(self, name: str, parent: QObject) -> None:
        super().__init__()
        self.thread = QThread(parent)
        self.thread.setObjectName(name)
        self.moveToThread(self.thread)
        self.submit.connect(self.run, QUEUED)  # this object lives in the lane's thread: queued there
        self.thread.start()

    @Slot(object)
    def run(self, handle: TaskHandle) -> None:
        if handle.dropped:
            handle.skipped.emit()
            return
        kind, value = execute(handle.task, handle.context)
        if kind == DONE:
            handle.succeeded.emit(value)
        elif kind == CANCELLED:
            handle.cancelled.emit()
        else:
            handle.failed.emit(*value)


class TaskRunner(QObject):
    """Starts tasks in their lanes; `started(handle)` fires before the job can run."""

    started = Signal(object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._lanes: dict[str, _Lane] = {}
        self._active: list[TaskHandle] = []
        self.closed = False

    def start(self, task: Task) -> TaskHandle:
        if self.closed:
            raise RuntimeError(f"the task runner is shut down; cannot start {task.name!r}")
        if task.supersede:
            for old in self._active:
                if old.task.lane == task.lane and old.task.name == task.name:
                    old.dropped = True
        handle = TaskHandle(task)
        handle.ended.connect(self._forget)
        self._active.append(handle)
        self.started.emit(handle)
        lane = self._lanes.get(task.lane)
        if lane is None:
            lane = self._lanes[task.lane] = _Lane(THREAD_NAMES.get(task.lane, f"{task.lane}Thread"), self)
        lane.submit.emit(handle)
        return handle

    def active(self, lane: str | None = None) -> list[TaskHandle]:
        """Handles whose outcome has not been delivered yet (of one lane, or all)."""
        return [h for h in self._active if lane is None or h.task.lane == lane]

    def _forget(self, handle: TaskHandle) -> None:
        if handle in self._active:
            self._active.remove(handle)
        handle.deleteLater()

    def shutdown(self, wait_ms: int = 30_000) -> None:
        """Cancel every task, deliver nothing more, stop the lanes' threads."""
        self.closed = True
        for handle in self._active:
            handle.dropped = True
            handle.cancel()
        for lane in self._lanes.values():
            lane.thread.quit()
        for lane in self._lanes.values():
            lane.thread.wait(wait_ms)
