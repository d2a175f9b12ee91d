"""The History tab without Qt: the rows of the run list, what each row allows and why not,
and the evaluation table in plain words.

The runs themselves come from the core (`quailora_core.history.scan_runs`: read from disk,
so a restart forgets nothing); this module only says how the app shows them.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quailora_core.adapter.record import METADATA_FILE
from quailora_core.history import INIT, RunEntry

from .formatting import fmt_pct

COLUMNS = ("Run", "Kind", "Created", "Model", "Result", "Status", "Folder")
EVAL_COLUMNS = ("Model", "Loss", "Perplexity")
# the evaluation's text and size (quailora eval's flags); `demo` is the built-in fine-tuning text
EVAL_DATA, EVAL_SAMPLES, EVAL_SEQ_LEN = "demo", 32, 256


# ---------------------------------------------------------------------------- the list
def created_text(entry: RunEntry) -> str:
    """The creation time in the user's time zone, to the minute."""
    if not entry.timestamp:
        return "–"
    return _dt.datetime.fromtimestamp(entry.timestamp).strftime("%Y-%m-%d %H:%M")


def result_text(entry: RunEntry) -> str:
    """The run's headline figure: the error an init removed, the loss a training reached."""
    s = entry.summary
    if entry.kind == INIT:
        share = s.get("mean_cal_improvement")
        return f"{fmt_pct(share)} of the calibrated error removed" if share is not None else "–"
    parts = []
    if entry.final_loss is not None:
        parts.append(f"loss {entry.final_loss:.4g}")
    if entry.perplexity is not None and math.isfinite(entry.perplexity):
        parts.append(f"perplexity {entry.perplexity:.4g}")
    return " · ".join(parts) or "–"


def status_text(entry: RunEntry) -> str:
    if entry.kind == INIT:
        return "adapter ready"
    total = f" / {entry.total_steps}" if entry.total_steps else ""
    if entry.finished:
        return f"trained, {entry.steps_done}{total} steps"
    if entry.resumable:
        return f"stopped at step {entry.checkpoint_step}{total}: can be resumed"
    return f"not finished, step {entry.steps_done}{total}" + ("" if entry.checkpoint else ", no checkpoint")


def entry_row(entry: RunEntry) -> tuple[str, ...]:
    """The cells of one row, in COLUMNS order."""
    kind = "Initialization" if entry.kind == INIT else "Training"
    return (entry.label, kind, created_text(entry), entry.model, result_text(entry), status_text(entry), entry.path)


# ---------------------------------------------------------------------------- what a row allows
def open_blocker(entry: RunEntry) -> str:
    """Why Open cannot show the run ("" when it can): a training run shows the adapter it
    trained, and Resume continues it when it lives in an exported run folder."""
    if entry.kind == INIT:
        return ""
    if not (Path(entry.adapter) / METADATA_FILE).is_file() and not entry.run_dir:
        return "The adapter this training started from is gone, and the run is not in a run folder the app can resume."
    return ""


def resume_blocker(entry: RunEntry) -> str:
    """Why Resume cannot continue this run ("" when it can)."""
    if entry.kind == INIT:
        return "An initialization has no training to resume: open it and Launch a training."
    if not entry.run_dir:
        return "This training was not launched from a run folder: continue it with `quailora train --resume`."
    if not entry.checkpoint:
        return "The run holds no complete checkpoint to resume from."
    if not entry.resumable:
        return (f"The run is at step {entry.checkpoint_step} of {entry.total_steps}: open it and raise Max steps "
                f"on the Training tab to train further.")  # fmt: skip
    return ""


def eval_blocker(entry: RunEntry) -> str:
    """Why Evaluate cannot measure this run ("" when it can)."""
    if entry.evaluable_adapter:
        return ""
    return "The training has not finished: there is no trained adapter to evaluate yet (its start is in the list too)."


# ---------------------------------------------------------------------------- evaluation
def eval_rows(report: Any) -> list[tuple[str, str, str]]:
    """The perplexity table of `quailora eval` (an EvalReport), its rows said in plain words."""
    rows = (
        ("Full precision (the base model, not quantized)", report.fp_loss, report.fp_perplexity),
        (f"Quantized ({report.quantization}), no adapter", report.quantized_loss, report.quantized_perplexity),
        (f"Quantized ({report.quantization}) with this adapter", report.adapter_loss, report.adapter_perplexity),
    )
    return [(name, f"{loss:.4f}", f"{ppl:.3f}") for name, loss, ppl in rows]


def eval_verdict(report: Any) -> str:
    """One sentence under the table: how much of the quantization loss the adapter recovers."""
    where = f"{report.samples} × {report.seq_len} tokens of {report.data!r}"
    if report.gap_measurable:
        return (f"The adapter recovers {fmt_pct(report.gap_recovered)} of the perplexity lost to quantization "
                f"({where}).")  # fmt: skip
    return (f"Quantization changes the loss too little to measure on this text ({where}): no share is given; "
            "use more samples or longer sequences.")  # fmt: skip


# ---------------------------------------------------------------------------- opening a row
@dataclass
class OpenedRun:
    """What Open read from disk for a row of the list (in the files lane: records are engine
    files, never read on the GUI thread)."""

    entry: RunEntry
    init_path: str = ""  # the init run to show ("" when there is none)
    stored: Any = None  # its StoredInitRun, None when the session holds it already (or none)
    train: Any = None  # a training run's TrainSettings, from its run file (Resume continues with them)
    curve: list[Any] = field(default_factory=list)  # its logged TrainStep / EvalResult events
    notes: list[str] = field(default_factory=list)  # what could not be read, for the log


def init_path_of(entry: RunEntry) -> str:
    """The init run a row shows: the run itself, or the adapter a training started from."""
    if entry.kind == INIT:
        return entry.path
    return entry.adapter if entry.adapter and (Path(entry.adapter) / METADATA_FILE).is_file() else ""


def read_for_open(entry: RunEntry, known: bool) -> OpenedRun:
    """Read what showing `entry` needs (`known`: the session holds its init run already).
    An init run that cannot be read raises its InputError; for a training run, what cannot
    be read is noted and the rest is shown."""
    from quailora_core.config import RunConfig
    from quailora_core.errors import InputError
    from quailora_core.history import load_init_run, training_curve
    from quailora_core.train.layout import RUN_FILE

    opened = OpenedRun(entry, init_path_of(entry))
    if opened.init_path and not known:
        try:
            opened.stored = load_init_run(opened.init_path)
        except InputError as exc:
            if entry.kind == INIT:
                raise
            opened.init_path = ""
            opened.notes.append(f"The adapter this training started from cannot be shown: {exc.message}")
    if entry.kind != INIT:
        if entry.run_dir:
            try:
                opened.train = RunConfig.load(Path(entry.run_dir) / RUN_FILE).train
            except InputError as exc:
                opened.notes.append(f"The run file of {entry.run_dir} cannot be read: {exc.message}")
        opened.curve = training_curve(entry.path)
    return opened
