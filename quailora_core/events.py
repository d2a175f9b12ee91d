"""Events the engine emits while it works, and the token that cancels it.

One protocol for every face: the GUI receives these objects through a Qt signal, the
CLI renders them as a progress bar or prints them as JSON lines (`--json`), and a run in
another process (training under `QProcess`, a run on a remote GPU box) streams the very
same JSON lines, which `event_from_json` turns back into objects.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Stage:
    """A new stage starts: calibrate / solve / export / train. `total` counts its steps."""

    name: str
    total: int = 0


@dataclass(frozen=True)
class LayerResult:
    """The metrics of one initialized layer (see ALGORITHM.md, 'Metrics reported per layer')."""

    index: int
    name: str
    block: int
    module: str
    shape: tuple[int, int]
    cal_err_before: float
    cal_err_after: float
    uncal_err_before: float
    uncal_err_after: float
    heldout_err_before: float
    heldout_err_after: float
    seconds: float
    method: str = ""


@dataclass(frozen=True)
class TrainStep:
    step: int
    total_steps: int
    loss: float
    lr: float
    tokens_per_second: float
    gpu_memory_gb: float | None = None


@dataclass(frozen=True)
class RankStatus:
    """One training process's own figures at a log step (in `RankProgress`): which machine and
    device it runs on, its time per optimizer step (a slow or stalled GPU shows here, and the
    others wait for it at every step) and its memory, the figure a sharded run lowers per GPU."""

    rank: int
    host: str
    device: str
    step: int
    seconds_per_step: float
    ram_gb: float  # the process's resident memory now
    gpu_memory_gb: float | None = None  # peak CUDA memory allocated on its device


@dataclass(frozen=True)
class RankProgress:
    """Every process of a multi-process run (`accelerate launch`) at one training log step: the
    ranks gather their `RankStatus` and rank 0, the one that speaks, emits them together."""

    step: int
    ranks: tuple[RankStatus, ...]


@dataclass(frozen=True)
class EvalResult:
    step: int
    loss: float
    perplexity: float


@dataclass(frozen=True)
class Progress:
    """`done` of `total` steps of the current stage (a merge's blocks), with what was done."""

    done: int
    total: int
    what: str = ""


@dataclass(frozen=True)
class Log:
    level: str  # "info" | "warning" | "error"
    message: str


@dataclass(frozen=True)
class Finished:
    output_dir: str
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failed:
    message: str
    hint: str = ""
    details: str = ""


@dataclass(frozen=True)
class JobUpdate:
    """A queued job changed state (`quailora_core.jobs`): running, done, failed, cancelled.
    The events of the job's own run stream between its running and its final update."""

    job_id: str
    label: str
    state: str
    message: str = ""
    output: str = ""


Event = Stage | LayerResult | TrainStep | RankProgress | EvalResult | Progress | Log | Finished | Failed | JobUpdate
EventCallback = Callable[[Event], None]
EVENT_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (Stage, LayerResult, TrainStep, RankProgress, EvalResult, Progress, Log, Finished, Failed, JobUpdate)
}


def event_to_json(event: Event) -> str:
    """One JSON line: {"event": "LayerResult", ...fields}."""
    return json.dumps({"event": type(event).__name__, **asdict(event)})


def event_from_json(line: str) -> Event:
    """Inverse of `event_to_json`; raises ValueError on a line that is not an event."""
    data = json.loads(line)
    if not isinstance(data, dict) or data.get("event") not in EVENT_TYPES:
        raise ValueError(f"not an event line: {line[:80]!r}")
    cls = EVENT_TYPES[data.pop("event")]
    names = {f.name for f in fields(cls)}
    kwargs = {k: v for k, v in data.items() if k in names}
    if cls is LayerResult:
        kwargs["shape"] = tuple(kwargs["shape"])
    if cls is RankProgress:
        kwargs["ranks"] = tuple(RankStatus(**rank) for rank in kwargs["ranks"])
    return cls(**kwargs)


def ignore_events(event: Event) -> None:
    """The default callback: drop every event."""


class CancelToken:
    """Thread-safe flag the engine checks between layers (and the trainer between steps)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()
