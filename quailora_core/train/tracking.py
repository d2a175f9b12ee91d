"""Experiment tracking of a training run: which tracker, whether it is installed, where its
files go, how to look at them.

The Trainer's own integrations do the logging (`TrainingArguments(report_to=...)`: TensorBoard
event files, Weights & Biases, MLflow); this module only picks one, refuses one that is not
installed (asking transformers' own availability checks, the ones its callbacks use) before
anything is loaded, and points each at the run's `logs/` folder through the settings those
libraries read, so that nothing lands in the working directory and nothing waits for a
network:

* TensorBoard: event files in `logs/` (`TENSORBOARD_LOGGING_DIR`, read by transformers'
  TensorBoardCallback; `logging_dir` on transformers releases that still have it);
* W&B: its run folder in `logs/` (`WANDB_DIR`); without an API key (`WANDB_API_KEY` or a
  `wandb login` entry in ~/.netrc) it runs offline (`WANDB_MODE=offline`) instead of asking
  for a login, and `wandb sync` uploads it later;
* MLflow: a local store `logs/mlflow.db` unless `MLFLOW_TRACKING_URI` names another.

Settings the user made in the environment win over these defaults.
"""

from __future__ import annotations

import contextlib
import netrc
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from quailora_core.config import TRACKERS
from quailora_core.errors import InputError

# the package each tracker of `[train] tracking` (config.TRACKERS) needs; "none" needs none
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
LABELS = {"tensorboard": "TensorBoard", "wandb": "Weights & Biases", "mlflow": "MLflow", "none": "none"}
WANDB_HOST = "api.wandb.ai"


def is_installed(tracker: str) -> bool:
    """Whether the Trainer can report to `tracker` here (transformers' own checks)."""
    if tracker == "none":
        return True
    from transformers.integrations import is_mlflow_available, is_tensorboard_available, is_wandb_available

    check = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "mlflow": is_mlflow_available}
    return tracker in check and bool(check[tracker]())


def installed_trackers() -> list[str]:
    """The trackers a run can use on this machine, in the order of `TRACKERS`."""
    return [name for name in TRACKERS if is_installed(name)]


def check_installed(tracker: str) -> None:
    """Refuse a tracker whose package is missing, saying what to install (the name itself is
    checked by `TrainSettings.validate`)."""
    if tracker in PACKAGES and not is_installed(tracker):
        raise InputError(
            f"Tracking with {LABELS[tracker]} needs the {PACKAGES[tracker]!r} package, which is not installed.",
            f"pip install {PACKAGES[tracker]}, or choose tracking none.",
            field="train.tracking",
        )


@dataclass(frozen=True)
class TrackingInfo:
    """Where a run's tracking files are and how to look at them (training_run.json, metrics.json)."""

    tool: str  # a TRACKERS key
    logs: str | None  # the folder the tracker writes in (None: no tracking, or somewhere else)
    view: str  # the command (or the place) that shows them

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)

    def line(self) -> str:
        """One sentence for the end of a run: where the logs are and how to view them."""
        if self.tool == "none":
            return "no experiment tracking (tracking none)"
        where = f" in {self.logs}" if self.logs else ""
        return f"{LABELS[self.tool]} logs{where}; view them with: {self.view}"


def tracking_info(tracker: str, logs: str | os.PathLike[str]) -> TrackingInfo:
    """What `tracker_environment(tracker, logs)` will make the tracker do."""
    logs = str(logs)
    if tracker == "tensorboard":
        return TrackingInfo(tracker, logs, f"tensorboard --logdir {logs}")
    if tracker == "wandb":
        if _wandb_offline():
            return TrackingInfo(tracker, logs, f"wandb sync {os.path.join(logs, 'wandb', 'offline-run-*')}")
        return TrackingInfo(tracker, logs, "the run's page on wandb.ai (its link is in the training log)")
    if tracker == "mlflow":
        uri = os.environ.get("MLFLOW_TRACKING_URI") or _mlflow_uri(logs)
        return TrackingInfo(tracker, logs if uri == _mlflow_uri(logs) else None, f"mlflow ui --backend-store-uri {uri}")
    return TrackingInfo("none", None, "")


def report_to(tracker: str) -> str:
    """The `TrainingArguments(report_to=...)` value."""
    return "none" if tracker == "none" else tracker


@contextlib.contextmanager
def tracker_environment(tracker: str, logs: str | os.PathLike[str]) -> Iterator[None]:
    """Point the tracker's Trainer callback at `logs` while the Trainer is built and trains
    (the callbacks read these variables then); the previous environment comes back after."""
    logs = str(logs)
    values: dict[str, str] = {}
    if tracker == "tensorboard":
        values["TENSORBOARD_LOGGING_DIR"] = logs
    elif tracker == "wandb":
        values["WANDB_DIR"] = logs
        if _wandb_offline():
            values["WANDB_MODE"] = "offline"
    elif tracker == "mlflow":
        values["MLFLOW_TRACKING_URI"] = _mlflow_uri(logs)
    if tracker != "none":
        Path(logs).mkdir(parents=True, exist_ok=True)
    saved = {key: os.environ.get(key) for key in values}
    for key, value in values.items():
        os.environ.setdefault(key, value)  # the user's own setting wins
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _wandb_offline() -> bool:
    """W&B runs offline unless told otherwise or it has an API key to log in with: online
    without a key it would stop and ask for one."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun", "disabled")
    if os.environ.get("WANDB_API_KEY"):
        return False
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is None
    except (OSError, netrc.NetrcParseError):
        return True


def _mlflow_uri(logs: str) -> str:
    return "sqlite:///" + str(Path(logs).resolve() / "mlflow.db")
