"""One queued run (`Job`) and the queue's whole state (`QueueState`), as typed records on disk.

A job holds its run as `RunConfig.to_dict()` with every path absolute (resolved when it was
added), not a run file's path: editing or moving a run file after queueing it cannot change
what the queue runs, and a job reads the same from any working directory. A training job's
runner writes that dict to a run file for the child process (`runner`).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

KINDS = ("init", "train")
QUEUED, RUNNING, CANCELLING, DONE, FAILED, CANCELLED = "queued", "running", "cancelling", "done", "failed", "cancelled"
STATES = (QUEUED, RUNNING, CANCELLING, DONE, FAILED, CANCELLED)
ACTIVE = (RUNNING, CANCELLING)  # a runner holds the job (its pid is alive, or it is stale)
FINISHED = (DONE, FAILED, CANCELLED)
FORMAT_VERSION = 1


def new_job_id() -> str:
    """Eight hex digits: short enough to type (`quailora queue cancel 3f2a9c01`), unique in
    any queue a person keeps (a prefix that names one job is enough on the command line)."""
    return uuid.uuid4().hex[:8]


@dataclass
class Job:
    """One init or training run in the queue and what became of it."""

    kind: str  # "init" | "train"
    config: dict[str, Any]  # RunConfig.to_dict(), paths absolute
    label: str = ""
    id: str = field(default_factory=new_job_id)
    state: str = QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    output: str = ""  # the adapter folder (init) or the training output folder (train)
    message: str = ""  # how it ended: the result, the error's one line, "cancelled"
    pid: int | None = None  # the runner's process while the job is running
    pid_started: str = ""  # when that process started (`queue_file.process_start`): a reused pid is not it

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class QueueState:
    """The queue file's content: the jobs in run order, the pause flag, and the runner (the
    pid of the one process taking jobs, so a second `queue run` refuses instead of running
    two jobs at once)."""

    jobs: list[Job] = field(default_factory=list)
    paused: bool = False
    runner: int | None = None
    runner_started: str = ""
    version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "paused": self.paused, "runner": self.runner,
                "runner_started": self.runner_started, "jobs": [j.to_dict() for j in self.jobs]}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QueueState:
        return cls(
            jobs=[Job.from_dict(j) for j in data.get("jobs", [])],
            paused=bool(data.get("paused", False)),
            runner=data.get("runner"),
            runner_started=str(data.get("runner_started", "")),
            version=int(data.get("version", FORMAT_VERSION)),
        )

    def job(self, job_id: str) -> Job | None:
        return next((j for j in self.jobs if j.id == job_id), None)

    def claimed_outputs(self) -> set[str]:
        """Output folders that queued or running jobs will write: a new job must not take one."""
        return {j.output for j in self.jobs if not j.finished and j.output}
