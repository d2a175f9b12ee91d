"""The one task runner: every background job runs in its lane's thread and reports on the
GUI thread through queued signals; superseded tasks are skipped or dropped, cancel reaches
the job, failures are outcomes, and nothing is delivered after shutdown."""

from __future__ import annotations

import threading
import time

import pytest

from quailora_core.errors import Cancelled
from quailora_gui.controllers.tasks import CHECKS, ENGINE, Task


@pytest.fixture
def runner(qtbot):
    from quailora_gui.app import create_app
    from quailora_gui.views.runner import TaskRunner

    create_app()
    r = TaskRunner()
    yield r
    r.shutdown(10_000)


def test_jobs_run_off_the_gui_thread_and_report_on_it_in_order(qtbot, runner):
    gui = threading.current_thread()
    seen = []

    def job(context):
        seen.append(("job", threading.current_thread() is not gui))
        for i in range(3):
            context.emit(i)
        return "result"

    def on_event(item):
        seen.append(("event", item, threading.current_thread() is gui))

    started = []
    runner.started.connect(started.append)
    handle = runner.start(Task("job", job, ENGINE, on_event=on_event, on_done=lambda r: seen.append(("done", r))))
    assert started == [handle]  # before the job can run
    qtbot.waitUntil(lambda: ("done", "result") in seen, timeout=10_000)
    assert seen == [("job", True), ("event", 0, True), ("event", 1, True), ("event", 2, True), ("done", "result")]
    assert runner.active() == []
    from PySide6.QtCore import QThread

    names = {t.objectName() for t in runner.findChildren(QThread)}
    assert names == {"runThread"}


def test_a_newer_task_supersedes_the_queued_and_running_ones(qtbot, runner):
    release = threading.Event()
    ran, done = [], []

    def check(n):
        def job(_context):
            ran.append(n)
            if n == 1:
                release.wait(10)
            return n

        return Task("check", job, CHECKS, on_done=done.append, supersede=True)

    runner.start(check(1))
    qtbot.waitUntil(lambda: ran == [1], timeout=10_000)  # the first one runs (and waits)
    runner.start(check(2))  # queued behind it
    runner.start(check(3))
    release.set()
    qtbot.waitUntil(lambda: done == [3], timeout=10_000)
    assert ran == [1, 3]  # 2 was skipped; 1 ran but its result was dropped
    qtbot.waitUntil(lambda: runner.active() == [], timeout=10_000)


def test_cancel_reaches_the_job_and_a_failure_is_an_outcome(qtbot, runner):
    outcomes = []
    started = threading.Event()

    def polls(context):
        started.set()
        while not context.cancelled:
            time.sleep(0.01)
        raise Cancelled()

    handle = runner.start(Task("run", polls, ENGINE, on_cancelled=lambda: outcomes.append("cancelled"),
                               on_done=lambda r: outcomes.append("done")))  # fmt: skip
    assert started.wait(10)
    handle.cancel()
    qtbot.waitUntil(lambda: outcomes == ["cancelled"], timeout=10_000)

    def breaks(_context):
        raise ValueError("bad input")

    runner.start(Task("x", breaks, on_error=lambda exc, details: outcomes.append((str(exc), "Traceback" in details))))
    qtbot.waitUntil(lambda: len(outcomes) == 2, timeout=10_000)
    assert outcomes[1] == ("bad input", True)


def test_nothing_is_delivered_after_shutdown(qtbot, runner):
    release = threading.Event()
    delivered = []

    def job(context):
        context.emit("early")
        release.wait(10)
        return "late"

    runner.start(Task("job", job, ENGINE, on_event=delivered.append, on_done=delivered.append))
    qtbot.waitUntil(lambda: delivered == ["early"], timeout=10_000)
    release.set()
    runner.shutdown(10_000)
    qtbot.wait(50)
    assert delivered == ["early"]
    with pytest.raises(RuntimeError, match="shut down"):
        runner.start(Task("again", lambda c: None))
