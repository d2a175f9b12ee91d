"""The queue file (`<output root>/queue.json`) and every change to it.

Several processes share one file: the app, a `quailora queue add` in a terminal, the runner
(`quailora queue run`, the app's child). Each change is a read-modify-write under an
exclusive lock on a side file (`queue.json.lock`; `fcntl.flock` on POSIX, `msvcrt.locking`
on Windows) and the new content replaces the file atomically (a temporary sibling, then
`os.replace`), so two writers never lose each other's jobs and a reader never sees half a
file. Reading takes no lock: the file is always whole.

A job is `running` only while its runner lives: a job whose runner's pid is gone (the
runner was killed, the machine restarted) reads as failed ("interrupted"), and Retry
queues it again, so nothing stays "running" forever.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from quailora_core.errors import InputError
from quailora_core.files import atomic_write_text, output_root
from quailora_core.jobs.job import (
    ACTIVE,
    CANCELLED,
    CANCELLING,
    DONE,
    FAILED,
    FINISHED,
    QUEUED,
    RUNNING,
    Job,
    QueueState,
)

QUEUE_FILE = "queue.json"


def default_queue_path() -> Path:
    """`<output root>/queue.json`: the app and the command line find the same queue."""
    return output_root() / QUEUE_FILE


def process_start(pid: int) -> str:
    """When process `pid` started, as Linux counts it (clock ticks since boot; "" elsewhere or
    when it is gone). With the pid it names one process: after a restart a pid is reused."""
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    return ""


def pid_alive(pid: int | None, started: str = "") -> bool:
    """Whether process `pid` exists (a zombie counts as gone where /proc says so) and, when
    `started` is known, is the one that started then."""
    if not pid:
        return False
    if os.name != "posix":
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        if not status or status[0] == "Z":
            return False
        return not started or status[19] == started
    return True


def _windows_pid_alive(pid: int) -> bool:  # pragma: no cover - Windows only
    import ctypes

    handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return False
    code = ctypes.c_ulong()
    ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
    ctypes.windll.kernel32.CloseHandle(handle)
    return code.value == 259  # STILL_ACTIVE


def reap(state: QueueState) -> bool:
    """Mark the jobs whose runner is gone as failed (interrupted), forget a dead runner;
    returns whether anything changed."""
    changed = False
    for job in state.jobs:
        if job.state in ACTIVE and not pid_alive(job.pid, job.pid_started):
            job.state, job.ended, job.pid, job.pid_started = FAILED, time.time(), None, ""
            job.message = "Interrupted: its runner stopped before the job ended. Retry queues it again."
            changed = True
    if state.runner is not None and not pid_alive(state.runner, state.runner_started):
        state.runner, state.runner_started, changed = None, "", True
    return changed


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        if os.name == "posix":
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        else:  # pragma: no cover - Windows: lock the first byte, retrying while another holds it
            import msvcrt

            handle.seek(0)
            while True:
                try:
                    msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
                    break
                except OSError:
                    time.sleep(0.05)
            try:
                yield
            finally:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)


class JobQueue:
    """The queue stored at `path` (default `default_queue_path()`)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path else default_queue_path()
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    # ------------------------------------------------------------------ reading
    def read(self) -> QueueState:
        """The queue as it stands, stale running jobs shown as failed (not written back)."""
        state = self._load()
        reap(state)
        return state

    def jobs(self) -> list[Job]:
        return self.read().jobs

    def _load(self) -> QueueState:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return QueueState()
        try:
            return QueueState.from_dict(json.loads(text))
        except (ValueError, TypeError, AttributeError) as exc:
            raise InputError(f"The queue file {str(self.path)!r} is not a queue: {exc}.",
                             "Move it away; a new queue starts empty.") from None  # fmt: skip

    @contextlib.contextmanager
    def edit(self) -> Iterator[QueueState]:
        """The queue under the lock; what the block leaves in it is written back atomically
        (nothing is written when the block raises)."""
        with _locked(self.lock_path):
            state = self._load()
            reap(state)
            yield state
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(state.to_dict(), indent=1) + "\n")

    # ------------------------------------------------------------------ the user's changes
    def add(self, jobs: list[Job]) -> list[Job]:
        """Append jobs (checked first with `check_job`: a bad one adds none of them)."""
        from quailora_core.jobs.build import check_job

        for job in jobs:
            check_job(job)
        outputs = [j.output for j in jobs]
        if len(set(outputs)) != len(outputs):
            raise InputError("Two of the new jobs write the same output folder.", "Give each job its own --output.")
        with self.edit() as state:
            claimed = state.claimed_outputs()
            for job in jobs:
                if job.output in claimed:
                    raise InputError(f"A queued job already writes {job.output!r}.", "Choose another --output.",
                                     field="output")  # fmt: skip
            state.jobs.extend(jobs)
        return jobs

    def find(self, job_id: str) -> Job:
        """The job whose id is `job_id` or starts with it."""
        return _find(self.read(), job_id)

    def move(self, job_id: str, index: int) -> Job:
        """Put a job at `index` (0 = first; clamped to the queue's length)."""
        with self.edit() as state:
            job = _find(state, job_id)
            state.jobs.remove(job)
            state.jobs.insert(max(0, min(index, len(state.jobs))), job)
        return job

    def cancel(self, job_id: str) -> Job:
        """A queued job: cancelled now. The running job: `cancelling`, which its runner sees
        and stops it (the engine at its next check, a training child by SIGTERM)."""
        with self.edit() as state:
            job = _find(state, job_id)
            if job.state == QUEUED:
                job.state, job.ended, job.message = CANCELLED, time.time(), "Cancelled before it started."
            elif job.state == RUNNING:
                job.state = CANCELLING
            elif job.state != CANCELLING:
                raise InputError(f"Job {job.id} has already ended ({job.state}).", "Only queued or running jobs cancel.")
        return job

    def remove(self, job_id: str) -> Job:
        """Take a queued or finished job out of the queue (a running one must be cancelled first)."""
        with self.edit() as state:
            job = _find(state, job_id)
            if job.state in ACTIVE:
                raise InputError(f"Job {job.id} is running.", "Cancel it first.")
            state.jobs.remove(job)
        return job

    def clear(self) -> int:
        """Remove the finished jobs (done, failed, cancelled); returns how many."""
        with self.edit() as state:
            before = len(state.jobs)
            state.jobs = [j for j in state.jobs if j.state not in FINISHED]
            return before - len(state.jobs)

    def retry(self, job_id: str) -> Job:
        """Queue a failed or cancelled job again, at the end of the queue."""
        with self.edit() as state:
            job = _find(state, job_id)
            if job.state not in (FAILED, CANCELLED):
                raise InputError(f"Job {job.id} is {job.state}.", "Only failed or cancelled jobs can be retried.")
            if job.output in state.claimed_outputs():
                raise InputError(f"A queued job already writes {job.output!r}.", "Remove that job first.")
            job.state, job.started, job.ended, job.message, job.pid, job.pid_started = QUEUED, None, None, "", None, ""
            state.jobs.remove(job)
            state.jobs.append(job)
        return job

    def set_paused(self, paused: bool) -> None:
        """Paused: the runner finishes its current job, then takes no other until resumed."""
        with self.edit() as state:
            state.paused = paused

    # ------------------------------------------------------------------ the runner's side
    def attach_runner(self, pid: int) -> None:
        """Register the one process that takes jobs; refused while another one lives."""
        with self.edit() as state:
            if state.runner not in (None, pid):
                raise InputError(f"The queue is already running (process {state.runner}).",
                                 "Wait for it, or stop it (Ctrl-C in its terminal, Pause in the app).")  # fmt: skip
            state.runner, state.runner_started = pid, process_start(pid)

    def detach_runner(self, pid: int) -> None:
        with self.edit() as state:
            if state.runner == pid:
                state.runner, state.runner_started = None, ""

    def claim_next(self, pid: int) -> Job | None:
        """The first queued job, now running under `pid`; None when none is queued or paused."""
        with self.edit() as state:
            if state.paused:
                return None
            job = next((j for j in state.jobs if j.state == QUEUED), None)
            if job is not None:
                job.state, job.started, job.message = RUNNING, time.time(), ""
                job.pid, job.pid_started = pid, process_start(pid)
            return job

    def finish(self, job_id: str, state_name: str, message: str) -> Job | None:
        """Record how a job ended (done / failed / cancelled)."""
        assert state_name in (DONE, FAILED, CANCELLED), state_name
        with self.edit() as state:
            job = state.job(job_id)
            if job is not None:  # removed meanwhile: nothing to record
                job.state, job.ended, job.message, job.pid, job.pid_started = state_name, time.time(), message, None, ""
            return job


def _find(state: QueueState, job_id: str) -> Job:
    job_id = job_id.strip()
    matches = [j for j in state.jobs if j.id == job_id] or [j for j in state.jobs if job_id and j.id.startswith(job_id)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise InputError(f"No job {job_id!r} in the queue.", "See `quailora queue list` for the ids.")
    raise InputError(f"{job_id!r} names {len(matches)} jobs.", "Give more of the id.")
