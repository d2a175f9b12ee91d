"""Fine-tuning from the app, without Qt: the command, the event stream, curves, ETA, outcome.

The window trains by exporting the run folder (`quailora_core.train.export.export_run`) and
starting the very command that folder's `launch.sh` runs, without `accelerate`:
`python -m quailora_core.train <run_dir>/run.toml --json`, as a child process. Its stdout
carries one JSON event per line (`TrainStep`, `EvalResult`, `Log`, `Finished`, `Failed`);
`LineBuffer` cuts the byte stream into lines and `TrainingState` turns them into curves,
rates, an ETA and, at the end, an outcome with its cause.
"""

from __future__ import annotations

import copy
import math
import os
import re
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quailora_core.events import EvalResult, Failed, Finished, RankProgress, TrainStep
from quailora_core.train.layout import LAUNCHER, OUTPUT_DIR, RUN_FILE, checkpoint_step, checkpoints

from .formatting import fmt_duration, fmt_gib
from .labels import RUN_KIND_NAMES
from .wording import app_words

TRAIN_OUTPUT = OUTPUT_DIR  # where the trained adapter and checkpoints of a run folder go
STDERR_TAIL = 20  # stderr lines kept to explain a crash
ETA_WINDOW = 20  # steps the ETA averages over
SMOOTHING = 0.9  # weight of the moving average drawn through the training loss
RANK_COLUMNS = ("Process", "Machine", "Device", "Step", "Per step", "RAM", "GPU peak")  # the tooltip says more


# ---------------------------------------------------------------------------- commands
@dataclass(frozen=True)
class LaunchPlan:
    """How Launch starts a run folder here: its number of processes, or why it cannot
    (`problem`), and what the log says about it (`note`, `warning`)."""

    processes: int
    problem: str = ""
    note: str = ""
    warning: str = ""


def launch_plan(kind: str, processes: int, gpus: int, posix: bool = os.name == "posix") -> LaunchPlan:
    """Launch's processes for the run kind and the Processes field on a machine with `gpus`
    CUDA devices: 0 is the kind's own count, as in launch.sh (1 for single, every GPU else).
    Several processes start through the folder's launch.sh (bash, `accelerate launch`); on a
    machine without GPUs they train data parallel on the CPU, which shards nothing (the core
    refuses FSDP and ZeRO-3 there: `run_kinds.check_sharding_device`, asked here first)."""
    from quailora_core.config import SHARDED_RUN_KINDS
    from quailora_core.errors import InputError
    from quailora_core.train.run_kinds import check_sharding_device

    count = processes or (1 if kind == "single" else max(gpus, 1))
    name = RUN_KIND_NAMES.get(kind, kind)
    try:  # the core's own refusal (launch.sh --check says it too), known here before anything is written
        check_sharding_device(kind, count > 1, cuda=gpus > 0)
    except InputError as e:
        return LaunchPlan(count, f"{e.message} {app_words(e.hint)}")
    if gpus and count > gpus:
        return LaunchPlan(count, f"{count} processes need {count} GPUs, and this machine has {gpus}: set Processes "
                                 f"to {gpus} or fewer, or Export run for a larger machine.")  # fmt: skip
    if count > 1 and not posix:
        return LaunchPlan(count, "Several processes start through the run folder's launch.sh, a bash script: set "
                                 "Processes to 1 here, or Export run and start it where bash runs.")  # fmt: skip
    if count == 1:
        warning = (f"{name} in one process holds the whole 4-bit model: nothing is sharded (set Processes to the "
                   "number of GPUs)." if kind in SHARDED_RUN_KINDS else "")  # fmt: skip
        return LaunchPlan(1, warning=warning)
    where = f"one per GPU ({name})" if gpus else "data parallel on the CPU (no GPU here)"
    return LaunchPlan(count, note=f"Training in {count} processes, {where}, through the run folder's launch.sh.")


def train_command(run_dir: str | Path, resume: bool = False, max_steps: int | None = None,
                  processes: int = 1) -> tuple[list[str], dict[str, str]]:  # fmt: skip
    """The child's command line and the environment it adds: one process runs the exported
    run's own command without `accelerate`; several run the folder's launch.sh, with this
    interpreter and its accelerate, on a free port of this machine."""
    run_dir = Path(run_dir)
    flags = ["--json"]
    if resume:
        flags.append("--resume")
        if max_steps:  # a higher step budget continues a run that already reached its end
            flags += ["--max-steps", str(int(max_steps))]
    if processes <= 1:
        return [sys.executable, "-m", "quailora_core.train", str(run_dir / RUN_FILE), *flags], {}
    env = {"NUM_PROCESSES": str(processes), "NUM_MACHINES": "1", "MACHINE_RANK": "0", "MAIN_PROCESS_PORT": "0",
           "PYTHON": sys.executable, "ACCELERATE": accelerate_command()}  # fmt: skip
    return ["bash", str(run_dir / LAUNCHER), *flags], env


def accelerate_command() -> str:
    """The `accelerate` of this interpreter's environment (next to it), else the PATH's."""
    here = Path(sys.executable).parent / ("accelerate.exe" if os.name == "nt" else "accelerate")
    return str(here) if here.exists() else (shutil.which("accelerate") or "accelerate")


def launch_text(run_dir: str | Path) -> str:
    """How to start an exported run folder, for the export dialog."""
    run_dir = Path(run_dir)
    return (
        f"# here or on a GPU machine with the package installed:\n"
        f"{run_dir / 'launch.sh'}\n"
        f"{run_dir / 'launch.sh'} --resume          # continue from the last checkpoint\n"
        f"NUM_PROCESSES=4 {run_dir / 'launch.sh'}   # one process per GPU\n"
        f"# the same without accelerate, one process:\n"
        f"python -m quailora_core.train {run_dir / RUN_FILE}\n"
    )


def with_train_settings(config: Any, settings: dict[str, Any]) -> Any:
    """A copy of `config` whose [train] section has the training panel's `settings`
    (TrainSettings field -> value): what File > Save run writes and the window remembers."""
    config = copy.deepcopy(config)
    for key, value in settings.items():
        setattr(config.train, key, value)
    return config


def training_config(run_config: Any, adapter_dir: str, settings: dict[str, Any]) -> Any:
    """A copy of the finished run's RunConfig that trains `adapter_dir` with `settings`
    (TrainSettings field -> value, from the training panel)."""
    config = with_train_settings(run_config, settings)
    config.train.adapter = str(adapter_dir)
    config.train.resume = False
    return config


def source_error(source: str, field: str) -> str:
    """Why the training (`train.data`) or validation (`train.validation_data`) source cannot be
    used, in one line, or "" (an empty validation source holds out a share of the data). The
    core's own check (`check_training_source`), the one Launch and Export run meet."""
    from quailora_core.errors import InputError
    from quailora_core.sources.training_data import check_training_source

    if field == "train.validation_data" and not source.strip():
        return ""
    try:
        check_training_source(source.strip(), field)
    except InputError as exc:
        return f"{exc.message} {exc.hint}".strip()
    return ""


def tracker_choices() -> list[tuple[str, str]]:
    """(tracker, label) of every `[train] tracking` choice, in the core's order."""
    from quailora_core.config import TRACKERS
    from quailora_core.train.tracking import LABELS

    return [(name, "none" if name == "none" else LABELS[name]) for name in TRACKERS]


def installed_trackers() -> set[str]:
    """The trackers a run can use here (transformers' own checks: call it once the engine is
    imported, it imports transformers)."""
    from quailora_core.train.tracking import installed_trackers as installed

    return set(installed())


def tracking_text(finished: Any) -> str:
    """Where a finished run's tracker wrote and how to view it (its Finished summary), or ""."""
    info = (getattr(finished, "summary", None) or {}).get("tracking")
    if not info:
        return ""
    from quailora_core.train.tracking import TrackingInfo

    line = TrackingInfo(**info).line()
    return line[:1].upper() + line[1:] + "."


def has_checkpoint(run_dir: str | Path | None) -> bool:
    """Whether the run folder's training output holds a complete checkpoint to resume from
    (the core's rule: `quailora_core.train.layout.checkpoints`)."""
    return bool(run_dir) and bool(checkpoints(Path(run_dir) / TRAIN_OUTPUT))


def resume_blocker(run_dir: str | Path | None, max_steps: int, epochs: float = 0.0) -> str:
    """Why Resume cannot continue the run folder now ("" when it can), in the core's rule:
    a complete checkpoint, below the Max steps the resumed run gets (`--max-steps`). Said
    before the click, instead of a child process that loads the model for ~20 s to refuse."""
    if not run_dir:
        return "Nothing to resume: launch a training, or open a training run in the History tab."
    found = checkpoints(Path(run_dir) / TRAIN_OUTPUT)
    if not found:
        return "Nothing to resume: the run holds no complete checkpoint yet."
    try:
        step = checkpoint_step(found[-1])
    except (OSError, ValueError):
        return f"The last checkpoint ({found[-1].name}) cannot be read."
    if not epochs and step >= max_steps:
        return (f"The last checkpoint ({found[-1].name}) is at step {step}, Max steps is {max_steps}: "
                f"raise Max steps above {step} to train further.")  # fmt: skip
    return ""


# ---------------------------------------------------------------------------- the stream
class LineBuffer:
    """Cuts a byte stream that arrives in arbitrary chunks into complete text lines."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[str]:
        self._pending += bytes(data)
        *lines, self._pending = self._pending.split(b"\n")
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]

    def flush(self) -> list[str]:
        """The last, unterminated line (at the end of the stream)."""
        rest, self._pending = self._pending, b""
        text = rest.decode("utf-8", "replace").rstrip("\r")
        return [text] if text.strip() else []


# a tqdm bar as the libraries underneath draw it (transformers' "Loading weights", datasets' maps):
# "desc: 40%|████      | 4/10 [00:01<00:02, 3.1it/s]" (ascii bars: "|####      |")
_TQDM_BAR = re.compile(r"^(?P<desc>.*?)\s*(?P<pct>\d{1,3})%\|[^|]*\|\s*(?P<rest>.*)$")
_TQDM_COUNT = re.compile(r"^(\d+)/(\d+)\b")


def plain_line(line: str) -> str | None:
    """A line of the child's output as the log shows it, or None to drop it.

    A tqdm progress bar redraws itself with carriage returns (or, on a pipe, as one line per
    update): only the last redraw counts, a bar is kept only once complete, and then without
    its block characters: "Loading weights: 100% 39/39 [00:00<00:00, 20583.60it/s]".
    """
    text = next((part for part in reversed(line.split("\r")) if part.strip()), "").rstrip()
    if not text:
        return None
    bar = _TQDM_BAR.match(text)
    if bar is None:
        return text
    count = _TQDM_COUNT.match(bar["rest"])
    if bar["pct"] != "100" and not (count and count[1] == count[2]):
        return None
    return f"{bar['desc']} {bar['pct']}% {bar['rest']}".strip()


def parse_line(line: str) -> Any | None:
    """The event a stdout line carries, or None for any other line (it goes to the log)."""
    from quailora_core.events import event_from_json

    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        return event_from_json(text)
    except (ValueError, TypeError, KeyError):
        return None


@dataclass
class Outcome:
    """How a training process ended: finished / stopped / failed, and why."""

    kind: str
    message: str
    hint: str = ""
    details: str = ""
    step: int = 0


@dataclass
class TrainingState:
    """What the training tab shows, fed with the child's events (and lines).

    Curves keep growing across a resume (the step count continues), `reset()` starts over.
    """

    clock: Callable[[], float] = time.monotonic
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_losses: list[float] = field(default_factory=list)
    perplexities: list[float] = field(default_factory=list)
    total_steps: int = 0
    tokens_per_second: float | None = None
    gpu_memory_gb: float | None = None
    ranks: tuple = ()  # the RankStatus of every process at the last log step (several processes only)
    finished: Any = None  # the Finished event
    failed: Any = None  # the Failed event
    stderr_tail: deque = field(default_factory=lambda: deque(maxlen=STDERR_TAIL))
    _step_times: deque = field(default_factory=lambda: deque(maxlen=ETA_WINDOW + 1))
    _started: float = 0.0

    def reset(self) -> None:
        """Forget everything (a new launch)."""
        self.__init__(clock=self.clock)  # type: ignore[misc]
        self.begin()

    def begin(self) -> None:
        """A process starts (a launch or a resume): the outcome and the rate are per process."""
        self.finished = self.failed = None
        self.ranks = ()  # a resume may start another number of processes
        self.stderr_tail.clear()
        self._step_times.clear()
        self._started = self.clock()

    # ------------------------------------------------------------------ feeding
    def on_event(self, event: Any) -> None:
        if isinstance(event, TrainStep):
            if self.steps and event.step <= self.steps[-1]:  # a resume re-logs no step, but be safe
                cut = next(i for i, s in enumerate(self.steps) if s >= event.step)
                del self.steps[cut:], self.losses[cut:], self.lrs[cut:]
            self.steps.append(int(event.step))
            self.losses.append(float(event.loss))
            self.lrs.append(float(event.lr))
            self.total_steps = int(event.total_steps)
            self.tokens_per_second = float(event.tokens_per_second)
            self.gpu_memory_gb = event.gpu_memory_gb
            self._step_times.append((self.clock(), int(event.step)))
        elif isinstance(event, RankProgress):
            self.ranks = tuple(event.ranks)
        elif isinstance(event, EvalResult):
            self.eval_steps.append(int(event.step))
            self.eval_losses.append(float(event.loss))
            self.perplexities.append(float(event.perplexity))
        elif isinstance(event, Finished):
            self.finished = event
        elif isinstance(event, Failed):
            self.failed = event

    def on_stderr(self, line: str) -> str | None:
        """Keep a stderr line for a crash's explanation; returns what the log shows (`plain_line`)."""
        text = plain_line(line)
        if text is not None:
            self.stderr_tail.append(text)
        return text

    # ------------------------------------------------------------------ figures
    def smoothed_losses(self, weight: float = SMOOTHING) -> list[float]:
        """The training loss as an exponential moving average (bias-corrected, as TensorBoard
        draws it): the trend through the step-to-step noise."""
        out, avg = [], 0.0
        for i, loss in enumerate(self.losses, 1):
            avg = weight * avg + (1 - weight) * loss
            out.append(avg / (1 - weight**i))
        return out

    @property
    def step(self) -> int:
        return self.steps[-1] if self.steps else 0

    def eta_seconds(self) -> float | None:
        """Seconds left: the mean time per step over the last steps of this process."""
        if len(self._step_times) < 2 or not self.total_steps:
            return None
        (t0, s0), (t1, s1) = self._step_times[0], self._step_times[-1]
        if s1 <= s0:
            return None
        return (t1 - t0) / (s1 - s0) * max(0, self.total_steps - s1)

    def elapsed(self) -> float:
        return self.clock() - self._started

    def status_text(self) -> str:
        if not self.steps:
            return "Loading the model and the training data…"
        return f"Step {self.step} of {self.total_steps} · loss {self.losses[-1]:.4g}"

    def eta_text(self) -> str:
        eta = self.eta_seconds()
        text = f"elapsed {fmt_duration(self.elapsed())}"
        return text if eta is None else f"{text} · about {fmt_duration(eta)} left"

    def stats(self) -> list[tuple[str, str]]:
        """(label, value) pairs for the figures under the charts."""
        rows = [
            ("Step", f"{self.step} / {self.total_steps}" if self.total_steps else "–"),
            ("Loss", f"{self.losses[-1]:.4g}" if self.losses else "–"),
            ("Learning rate", f"{self.lrs[-1]:.3g}" if self.lrs else "–"),
            ("Tokens/s", f"{self.tokens_per_second:,.0f}" if self.tokens_per_second else "–"),
            ("Validation perplexity", _ppl(self.perplexities[-1]) if self.perplexities else "–"),
            ("Time left", fmt_duration(self.eta_seconds()) if self.eta_seconds() is not None else "–"),
        ]
        if self.gpu_memory_gb is not None:
            rows.append(("GPU memory", fmt_gib(self.gpu_memory_gb)))
        return rows

    def rank_rows(self) -> list[tuple[str, ...]]:
        """The per-process table (`RANK_COLUMNS`), one row per rank; empty with one process."""
        return [(str(r.rank), r.host, r.device, str(r.step),
                 f"{r.seconds_per_step:.2f} s" if r.seconds_per_step else "–", fmt_gib(r.ram_gb),
                 fmt_gib(r.gpu_memory_gb))
                for r in self.ranks]  # fmt: skip

    # ------------------------------------------------------------------ the end
    def outcome(
        self, exit_code: int, crashed: bool, stop_requested: bool, checkpoint_in: str = ""
    ) -> Outcome:
        """How the process ended, from its events, exit code and stderr. `checkpoint_in`: the
        folder holding a checkpoint to resume from ("" when there is none)."""
        if self.finished is not None and exit_code == 0 and not crashed:
            return Outcome("finished", f"Training finished at step {self.step}.", tracking_text(self.finished),
                           step=self.step)  # fmt: skip
        if stop_requested:
            where = f"at step {self.step}" if self.steps else "before the first step"
            if checkpoint_in:
                return Outcome("stopped", f"Training stopped {where}; checkpoint saved.",
                               f"Resume continues it (checkpoint in {checkpoint_in}).", step=self.step)  # fmt: skip
            return Outcome("stopped", f"Training stopped {where}.", "No checkpoint was saved: Launch starts over.",
                           step=self.step)  # fmt: skip
        tail = "\n".join(self.stderr_tail)
        if self.failed is not None:
            details = self.failed.details or tail
            return Outcome("failed", app_words(self.failed.message), app_words(self.failed.hint), details, self.step)
        if crashed:
            return Outcome(
                "failed",
                "The training process crashed (it was killed by a signal).",
                "A process killed without a message is often out of memory: lower the batch size or "
                "the sequence length.",
                tail,
                self.step,
            )
        last = next((line for line in reversed(self.stderr_tail) if line.strip()), "")
        message = f"The training process exited with code {exit_code}" + (
            f": {last.strip()}" if last else "."
        )
        return Outcome("failed", message, "The log holds its last messages.", tail, self.step)


def _ppl(value: float) -> str:
    return "∞" if not math.isfinite(value) else f"{value:.4g}"
