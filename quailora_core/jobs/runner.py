"""The runner: takes the queue's jobs one after another until it is empty, paused or cancelled.

It re-reads the queue file before each job, so jobs added, moved, cancelled or a pause set
meanwhile (from the app or a terminal) apply to what it takes next. An init job runs
in-process through the engine (`run_init`, with a CancelToken); a training job runs as the
same child process the app launches (`python -m quailora_core.train run.toml --json`), its
JSON event lines forwarded as events. While a job runs, a watcher thread polls the queue
file: a `cancel` there (the job's state `cancelling`) or the runner's own token stops the
job: the engine at its next check, the training child by one SIGTERM to its process group
(it checkpoints at the end of the step; SIGKILL after KILL_AFTER_S).

The training child has its own session, as the app's Training tab gives it, so a Ctrl-C in
the runner's terminal or the app's Stop of the runner's group reaches it once, through the
runner: a second signal would make the trainer stop at once, without its checkpoint. On
Linux it also gets SIGTERM when the runner dies (PR_SET_PDEATHSIG), so a killed runner
leaves no training running unseen.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quailora_core.errors import Cancelled, QuailoraError
from quailora_core.events import (
    CancelToken,
    Event,
    EventCallback,
    Failed,
    JobUpdate,
    Log,
    event_from_json,
    ignore_events,
)
from quailora_core.jobs.job import CANCELLED, CANCELLING, DONE, FAILED, RUNNING, Job
from quailora_core.jobs.queue_file import JobQueue

POLL_S = 0.25  # how often a running job's watcher reads the queue file for a cancel
KILL_AFTER_S = 30.0  # a training child still there this long after SIGTERM is killed
RUN_FILES = "queue-runs"  # beside the queue file: the run files of training jobs


@dataclass
class QueueRun:
    """What one `run_queue` did: the ids of the jobs by how they ended, and why it stopped
    ("empty", "paused", "cancelled" or "once")."""

    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    stopped: str = "empty"


def run_queue(path: str | os.PathLike[str] | None = None, on_event: EventCallback = ignore_events,
              cancel: CancelToken | None = None, once: bool = False) -> QueueRun:  # fmt: skip
    """Run queued jobs in order (just the next one with `once`). Each job's events stream
    through `on_event` between its JobUpdate("running") and its final JobUpdate. Refuses
    (InputError) while another runner holds the queue."""
    queue = JobQueue(path)
    cancel = cancel or CancelToken()
    pid = os.getpid()
    run = QueueRun()
    queue.attach_runner(pid)
    try:
        while True:
            if cancel.cancelled:
                run.stopped = "cancelled"
                break
            job = queue.claim_next(pid)
            if job is None:
                run.stopped = "paused" if queue.read().paused else "empty"
                break
            on_event(JobUpdate(job.id, job.label, RUNNING, "", job.output))
            try:
                state, message = _run_job(queue, job, on_event, cancel)
            except BaseException:  # a second Ctrl-C: record it, then let it through
                queue.finish(job.id, CANCELLED, "Interrupted.")
                raise
            queue.finish(job.id, state, message)
            on_event(JobUpdate(job.id, job.label, state, message, job.output))
            {DONE: run.done, FAILED: run.failed, CANCELLED: run.cancelled}[state].append(job.id)
            if once:
                run.stopped = "once"
                break
    finally:
        queue.detach_runner(pid)
    return run


def _run_job(queue: JobQueue, job: Job, on_event: EventCallback, cancel: CancelToken) -> tuple[str, str]:
    if job.kind == "init":
        return _run_init(queue, job, on_event, cancel)
    return _run_train(queue, job, on_event, cancel)


def _run_init(queue: JobQueue, job: Job, on_event: EventCallback, cancel: CancelToken) -> tuple[str, str]:
    from quailora_core.config import RunConfig
    from quailora_core.init.pipeline import run_init

    token = CancelToken()

    def forward(event: Event) -> None:
        # also checked after each event: a cancel made while handling one (the app's button,
        # a test) stops the engine at its next check, whatever the watcher's timing
        on_event(event)
        if cancel.cancelled or _cancelling(queue, job.id):
            token.cancel()

    with _watch(queue, job.id, cancel, token.cancel):
        try:
            result = run_init(RunConfig.from_dict(job.config), forward, token)
        except Cancelled:
            return CANCELLED, "Cancelled; nothing was written."
        except QuailoraError as exc:
            return FAILED, exc.one_line()
        except Exception as exc:  # a failure of the run: the job fails, the queue goes on
            return FAILED, f"{type(exc).__name__}: {exc}"
    return DONE, f"Adapter written to {result.output_dir}."


def _run_train(queue: JobQueue, job: Job, on_event: EventCallback, cancel: CancelToken) -> tuple[str, str]:
    from quailora_core.config import RunConfig

    run_file = queue.path.parent / RUN_FILES / f"{job.id}.toml"
    run_file.parent.mkdir(parents=True, exist_ok=True)
    RunConfig.from_dict(job.config).save(run_file)
    command = [sys.executable, "-m", "quailora_core.train", str(run_file), "--json"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                            **_child_session())  # fmt: skip
    stopped, once = threading.Event(), threading.Lock()

    def stop() -> None:  # one SIGTERM, whoever asks first (the watcher, the event loop below)
        if not once.acquire(blocking=False):
            return
        stopped.set()
        _signal(proc, signal.SIGTERM)
        try:
            proc.wait(KILL_AFTER_S)
        except subprocess.TimeoutExpired:
            _signal(proc, getattr(signal, "SIGKILL", signal.SIGTERM))

    failed: Failed | None = None
    try:
        with _watch(queue, job.id, cancel, stop):
            assert proc.stdout is not None
            for line in proc.stdout:
                try:
                    event = event_from_json(line)
                except ValueError:
                    event = Log("info", line.rstrip())
                if isinstance(event, Failed):
                    failed = event
                on_event(event)
                if not stopped.is_set() and (cancel.cancelled or _cancelling(queue, job.id)):
                    threading.Thread(target=stop, daemon=True).start()  # as for init: checked after each event
            code = proc.wait()
    finally:
        if proc.poll() is None:  # the runner itself is interrupted: the child stops too
            _signal(proc, signal.SIGTERM)
    if code == 0:
        return DONE, f"Trained adapter written to {Path(job.output) / 'adapter'}."
    if stopped.is_set():
        return CANCELLED, "Stopped; its last checkpoint is kept (train it with --resume to continue)."
    if failed is not None:
        return FAILED, f"{failed.message} {failed.hint}".strip()
    return FAILED, f"The training process ended with exit code {code}."


def _child_session() -> dict[str, Any]:
    """Popen arguments: a new session (POSIX), and on Linux a SIGTERM when the runner dies."""
    if os.name != "posix":
        return {}
    kwargs: dict[str, Any] = {"start_new_session": True}
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            import ctypes

            prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
            kwargs["preexec_fn"] = lambda: prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    return kwargs


def _signal(proc: subprocess.Popen, sig: int) -> None:
    """`sig` to the child's process group (the child leads it), else to the child."""
    with contextlib.suppress(OSError):
        if os.name == "posix":
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)


@contextlib.contextmanager
def _watch(queue: JobQueue, job_id: str, cancel: CancelToken, stop: Callable[[], None]) -> Iterator[None]:
    """Call `stop` once, from a thread, when the job is cancelled in the queue file or the
    runner is cancelled, while the block runs."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(POLL_S):
            if cancel.cancelled or _cancelling(queue, job_id):
                stop()
                return

    thread = threading.Thread(target=watch, name=f"queue-watch-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _cancelling(queue: JobQueue, job_id: str) -> bool:
    try:
        job = queue.read().job(job_id)
    except (OSError, QuailoraError):  # a file being replaced on a system without atomic rename
        return False
    return job is None or job.state == CANCELLING
