"""The runs on disk: every finished initialization and training run under an output root.

The app forgets nothing it wrote: what it shows after a restart is read back from the
folders the engine left, never from a database of its own, so a run made with the command
line (or copied from another machine) is listed the same way. Two kinds of folder count:

- an *init run*: an adapter folder with `quailora.json` (`adapter.record.AdapterRecord`: the
  run's config, its per-layer metrics, its summary);
- a *training run*: a training output folder with `training_run.json` (written when training
  starts) and, once it finished, `metrics.json`, plus its checkpoints; inside an exported
  run folder (`train.export`: `run.toml`, `adapter/`, `output/`) it is `output/`, and the
  run folder's `adapter/` copy is the init adapter it trained, not another init run.

`scan_runs(root)` walks at most `MAX_DEPTH` levels below the root, never follows what a
run folder holds further down (checkpoints, the trained adapter), and skips anything it
cannot read with a reason (a half-written folder, a broken JSON file, a newer format):
listing never fails because one folder is broken. Entries come newest first.
`load_init_run(path)` turns an init run's record back into what a run of this session
gave the app: its config, its `LayerResult` events, its summary and serving verdicts.
Reading only: nothing here loads a model or imports torch.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quailora_core.adapter.record import METADATA_FILE, AdapterRecord
from quailora_core.config import RunConfig
from quailora_core.errors import InputError
from quailora_core.evaluate import perplexity
from quailora_core.events import EvalResult, LayerResult, TrainStep
from quailora_core.files import output_root
from quailora_core.train.layout import (
    ADAPTER_DIR,
    FINAL_ADAPTER,
    METRICS_FILE,
    OUTPUT_DIR,
    RUN_FILE,
    RUN_RECORD,
    checkpoint_step,
    checkpoints,
)

MAX_DEPTH = 3  # root/adapter, root/run-folder/output, root/project/run-folder/output
METHOD_SHORT: dict[str, str] = {"quailora": "QuAILoRA", "exact": "exact", "loftq": "LoftQ", "qlora": "QLoRA"}
INIT, TRAINING = "init", "training"


@dataclass(frozen=True)
class RunEntry:
    """One run found on disk, with the figures a list of runs shows."""

    kind: str  # INIT or TRAINING
    path: str  # the adapter folder (init) or the training output folder (training)
    label: str  # "QuAILoRA / r16 / 4-bit NF4"
    created: str  # ISO time the run was made (init) or started (training); "" when unknown
    timestamp: float  # `created` as seconds since the epoch (the folder's mtime when unknown)
    model: str  # the base model as the user gave it (`demo`, a hub id, a path)
    summary: dict[str, Any] = field(default_factory=dict)  # init: the record's summary; training: metrics.json
    # training runs only
    adapter: str = ""  # the initialized adapter it trained
    run_dir: str = ""  # the exported run folder (run.toml) it lives in, "" when trained elsewhere
    steps_done: int = 0
    total_steps: int = 0  # 0 when unknown
    final_loss: float | None = None  # the last training loss logged
    perplexity: float | None = None  # of the last validation
    finished: bool = False  # metrics.json was written: the trained adapter is complete
    checkpoint: str = ""  # the newest complete checkpoint, "" when none
    checkpoint_step: int = 0

    @property
    def trained_adapter(self) -> str:
        """The adapter a finished training wrote ("" before it finished)."""
        return str(Path(self.path) / FINAL_ADAPTER) if self.kind == TRAINING and self.finished else ""

    @property
    def resumable(self) -> bool:
        """A checkpoint below the run's step budget (training could go on from it)."""
        return bool(self.checkpoint) and (self.total_steps == 0 or self.checkpoint_step < self.total_steps)

    @property
    def evaluable_adapter(self) -> str:
        """The adapter `quailora eval` measures for this run ("" when there is none yet)."""
        return self.path if self.kind == INIT else self.trained_adapter


@dataclass(frozen=True)
class Skipped:
    """A folder that looked like a run but could not be read."""

    path: str
    reason: str


@dataclass
class History:
    entries: list[RunEntry] = field(default_factory=list)  # newest first
    skipped: list[Skipped] = field(default_factory=list)


@dataclass
class StoredInitRun:
    """An init run read back from its folder: what `run_init`'s InitResult gave the app."""

    output_dir: str
    config: RunConfig
    layers: list[LayerResult]
    summary: dict[str, Any]
    serving: list[Any] = field(default_factory=list)  # serving.stacks.StackVerdict per stack


# ---------------------------------------------------------------------------- labels and times
def run_label(method: str, rank: Any, bits: Any, quant_type: str = "") -> str:
    """'QuAILoRA / r16 / 4-bit NF4': method, rank and bits, as the app names a run."""
    quant = f"{bits}-bit" + (f" {(quant_type or '').upper()}" if bits == 4 else "")
    return f"{METHOD_SHORT.get(method, method or '?')} / r{rank} / {quant}"


def _timestamp(created: str, folder: Path) -> float:
    try:
        when = _dt.datetime.fromisoformat(created)
        if when.tzinfo is None:
            when = when.replace(tzinfo=_dt.timezone.utc)
        return when.timestamp()
    except (TypeError, ValueError):
        return folder.stat().st_mtime


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path.name} cannot be read: {exc}.", "The run may be half-written.") from None
    if not isinstance(data, dict):
        raise InputError(f"{path.name} is not a JSON object.", "The run may be half-written.")
    return data


# ---------------------------------------------------------------------------- one folder
def read_init_run(folder: str | os.PathLike[str]) -> RunEntry:
    """The entry of an adapter folder `quailora init` wrote; InputError when it is not one."""
    path = Path(folder)
    record = AdapterRecord.load(path)
    q, lora, init = record.quantization, record.lora, record.init
    return RunEntry(
        kind=INIT,
        path=str(path.resolve()),
        label=run_label(init.get("method", ""), lora.get("rank", "?"), q.bits, q.quant_type or ""),
        created=record.created,
        timestamp=_timestamp(record.created, path),
        model=record.base_model.reference or record.base_model.path,
        summary=dict(record.summary),
    )


def read_training_run(folder: str | os.PathLike[str], run_dir: str | os.PathLike[str] = "") -> RunEntry:
    """The entry of a training output folder (training_run.json, metrics.json, checkpoints)."""
    path = Path(folder)
    if not (path / RUN_RECORD).is_file():
        raise InputError(f"{str(path)!r} has no {RUN_RECORD}.", "Training writes it when it starts.")
    started = _read_json(path / RUN_RECORD)
    metrics = _read_json(path / METRICS_FILE) if (path / METRICS_FILE).is_file() else {}
    finished = bool(metrics) and (path / FINAL_ADAPTER / "adapter_config.json").is_file()
    config = started.get("run_config") or {}
    section = lambda name: config.get(name) if isinstance(config.get(name), dict) else {}  # noqa: E731
    q, train = section("quantization"), section("train")
    label = run_label(section("init").get("method", ""), section("lora").get("rank", "?"), q.get("bits", "?"),
                      q.get("quant_type", ""))  # fmt: skip
    found = checkpoints(path)
    step = checkpoint_step(found[-1]) if found else 0
    total = metrics.get("max_steps") or 0
    if not total and found:
        state = _read_json(found[-1] / "trainer_state.json")
        total = state.get("max_steps") or 0
    if not total and not train.get("epochs"):
        total = train.get("max_steps") or 0
    adapter = str(started.get("adapter") or "")
    if run_dir and not Path(adapter).is_dir() and (Path(run_dir) / ADAPTER_DIR).is_dir():
        adapter = str(Path(run_dir) / ADAPTER_DIR)  # the run folder was moved or copied
    created = str(started.get("started") or "")
    return RunEntry(
        kind=TRAINING,
        path=str(path.resolve()),
        label=label,
        created=created,
        timestamp=_timestamp(created, path),
        model=str(section("model").get("path") or started.get("base_model") or ""),
        summary={k: v for k, v in metrics.items() if k != "log_history"},
        adapter=adapter,
        run_dir=str(Path(run_dir).resolve()) if run_dir else "",
        steps_done=int(metrics.get("global_step") or step),
        total_steps=int(total),
        final_loss=metrics.get("train_loss"),
        perplexity=metrics.get("perplexity"),
        finished=finished,
        checkpoint=str(found[-1].resolve()) if found else "",
        checkpoint_step=step,
    )


# ---------------------------------------------------------------------------- the walk
def scan_runs(
    root: str | os.PathLike[str] | None = None, max_depth: int = MAX_DEPTH, also: Iterable[str | os.PathLike[str]] = ()
) -> History:
    """Every init and training run at most `max_depth` levels below `root` (the app's output
    root by default), newest first; unreadable ones are in `skipped` with the reason. `also`
    names run folders elsewhere to list too (the app's runs written outside the root: an
    adapter folder, a run folder or a training output), once each."""
    history = History()
    base = Path(root).expanduser() if root is not None else output_root()

    def add(reader: Any, folder: Path, *args: Any) -> None:
        try:
            history.entries.append(reader(folder, *args))
        except (InputError, OSError, ValueError, TypeError, KeyError) as exc:
            history.skipped.append(Skipped(str(folder), getattr(exc, "message", None) or str(exc)))

    def visit(folder: Path, depth: int) -> None:
        if (folder / RUN_FILE).is_file() and (folder / ADAPTER_DIR).is_dir():  # an exported run folder
            if (folder / OUTPUT_DIR / RUN_RECORD).is_file():
                add(read_training_run, folder / OUTPUT_DIR, folder)
            return  # exported, never trained: its adapter/ is a copy of an init run
        if (folder / RUN_RECORD).is_file():
            add(read_training_run, folder)
            return
        if (folder / METADATA_FILE).is_file():
            add(read_init_run, folder)
            return
        if depth >= max_depth:
            return
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError as exc:
            history.skipped.append(Skipped(str(folder), f"cannot be listed: {exc.strerror or exc}"))
            return
        for child in children:
            visit(child, depth + 1)

    if base.is_dir():
        try:
            children = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError as exc:
            history.skipped.append(Skipped(str(base), f"cannot be listed: {exc.strerror or exc}"))
            children = []
        for child in children:
            visit(child, 1)
    listed = {e.path for e in history.entries} | {str(Path(s.path).resolve()) for s in history.skipped}
    for extra in also:
        folder = Path(extra).expanduser().resolve()
        inside = folder / OUTPUT_DIR if (folder / RUN_FILE).is_file() else folder
        copy = folder.name == ADAPTER_DIR and (folder.parent / RUN_FILE).is_file()  # a run folder's adapter/
        if folder.is_dir() and not copy and str(folder) not in listed and str(inside) not in listed:
            listed.add(str(folder))
            visit(folder, max_depth)  # the folder itself, nothing below it
    history.entries.sort(key=lambda e: e.timestamp, reverse=True)
    return history


# ---------------------------------------------------------------------------- reopening
def layers_of(record: AdapterRecord) -> list[LayerResult]:
    """The record's per-layer metrics as the LayerResult events the run emitted."""
    names = {f.name for f in dataclasses.fields(LayerResult)}
    layers = []
    for item in record.layers:
        values = {k: v for k, v in item.items() if k in names}
        if "shape" in values:
            values["shape"] = tuple(values["shape"])
        try:
            layers.append(LayerResult(**values))
        except TypeError:
            raise InputError(
                f"The per-layer metrics in {METADATA_FILE} lack figures ({sorted(names - set(values))}).",
                "Run `quailora init` again to get a record with every figure.",
            ) from None
    return layers


def training_curve(folder: str | os.PathLike[str]) -> list[TrainStep | EvalResult]:
    """A training run's logged steps and validations, as the events the trainer emitted
    (its loss and learning-rate curve; the token rate is not logged: 0), from metrics.json
    once it finished, else from its newest checkpoint; [] when neither can be read."""
    path = Path(folder)
    try:
        if (path / METRICS_FILE).is_file():
            data = _read_json(path / METRICS_FILE)
        else:
            found = checkpoints(path)
            data = _read_json(found[-1] / "trainer_state.json") if found else {}
    except InputError:
        return []
    history = data.get("log_history") or []
    total = int(data.get("max_steps") or 0)
    events: list[TrainStep | EvalResult] = []
    for item in history:
        if not isinstance(item, dict) or "step" not in item:
            continue
        step = int(item["step"])
        if "loss" in item:
            events.append(TrainStep(step, total, float(item["loss"]), float(item.get("learning_rate", 0.0)), 0.0))
        elif "eval_loss" in item:
            events.append(EvalResult(step, float(item["eval_loss"]), perplexity(float(item["eval_loss"]))))
    return events


def load_init_run(folder: str | os.PathLike[str]) -> StoredInitRun:
    """An init run's config, layers, summary and serving verdicts, read from its folder."""
    path = Path(folder).expanduser().resolve()
    record = AdapterRecord.load(path)
    if not record.run_config:
        raise InputError(f"{METADATA_FILE} in {str(path)!r} does not hold the run's settings.",
                         "Run `quailora init` again with this version to reopen the run in the app.")  # fmt: skip
    config = RunConfig.from_dict(record.run_config)
    try:
        from quailora_core.serving.folder import adapter_verdicts

        serving = adapter_verdicts(path)
    except (InputError, OSError, ValueError, KeyError):
        serving = []  # the verdicts are a hint; a folder without them still reopens
    return StoredInitRun(str(path), config, layers_of(record), dict(record.summary), serving)
