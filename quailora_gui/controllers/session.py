"""Finished runs of this session, kept so that one can be overlaid on another: the runs made
in this window and those reopened from the history (`quailora_core.history`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quailora_core.history import run_label

from .formatting import fmt_duration, fmt_err, fmt_pct
from .results import RunResults

# Known summary keys of quailora_core.init.metrics.summarize, with their row labels; any other
# key is shown too, labelled from its name.
SUMMARY_LABELS: dict[str, str] = {
    "layers": "Layers",
    "n_layers": "Layers",
    "mean_cal_err_before": "Mean calibrated error, before",
    "mean_cal_err_after": "Mean calibrated error, after",
    "mean_heldout_err_before": "Mean held-out error, before",
    "mean_heldout_err_after": "Mean held-out error, after",
    "mean_uncal_err_before": "Mean weight error, before",
    "mean_uncal_err_after": "Mean weight error, after",
    "mean_improvement": "Mean share of error removed",
    "mean_cal_improvement": "Mean share of calibrated error removed",
    "mean_heldout_improvement": "Mean share of held-out error removed",
    "total_seconds": "Total time",
    "seconds": "Time in the solver (sum over layers)",
    "seconds_to_solve": "Time to the last layer solved",
    "wall_seconds": "Wall-clock time of the run",
    "verify": "Self-check",
    "verified_layers": "Layers recomputed by the self-check",
    "verify_max_difference": "Self-check: largest difference (relative)",
}


def run_name(config: Any, number: int) -> str:
    """'#2 QuAILoRA / r16 / 4-bit NF4': method, rank and bits, as the compare list shows it
    (the core's label of a run, as the History tab lists it, numbered in the session)."""
    q = config.quantization
    return f"#{number} {run_label(config.init.method, config.lora.rank, q.bits, q.quant_type)}"


def format_summary_value(key: str, value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int) or (isinstance(value, float) and key in ("layers", "n_layers")):
        return f"{int(value):,}"
    if isinstance(value, float):
        if "seconds" in key or key.endswith("_s"):
            return fmt_duration(value)
        if "improvement" in key or "removed" in key:
            return fmt_pct(value)
        return fmt_err(value)
    return str(value)


def summary_label(key: str) -> str:
    return SUMMARY_LABELS.get(key, key.replace("_", " ").capitalize())


@dataclass
class FinishedRun:
    number: int
    config: Any  # RunConfig, deep-copied
    layers: list[Any]
    summary: dict[str, Any]
    output_dir: str
    serving: list[Any] = field(default_factory=list)  # the adapter's serving verdicts (StackVerdict)
    results: RunResults = field(init=False)

    def __post_init__(self) -> None:
        self.results = RunResults(self.layers)

    @property
    def name(self) -> str:
        return run_name(self.config, self.number)


class Session:
    """The list of finished runs, newest last."""

    def __init__(self) -> None:
        self.runs: list[FinishedRun] = []

    def add(self, config: Any, layers: list[Any], summary: dict[str, Any], output_dir: str,
            serving: list[Any] | None = None) -> FinishedRun:  # fmt: skip
        run = FinishedRun(len(self.runs) + 1, copy.deepcopy(config), list(layers), dict(summary), output_dir,
                          list(serving or []))  # fmt: skip
        self.runs.append(run)
        return run

    def find(self, output_dir: str) -> FinishedRun | None:
        """The run of this session whose adapter is in `output_dir` (reopening it twice shows it again)."""
        want = Path(output_dir).expanduser().resolve()
        for run in self.runs:
            if Path(run.output_dir).expanduser().resolve() == want:
                return run
        return None

    def get(self, number: int) -> FinishedRun | None:
        for run in self.runs:
            if run.number == number:
                return run
        return None

    @property
    def latest(self) -> FinishedRun | None:
        return self.runs[-1] if self.runs else None

    def __len__(self) -> int:
        return len(self.runs)


def compare_rows(a: dict[str, Any], b: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    """(label, value in a, value in b) for every summary figure of either run, a's order first."""
    keys = list(a)
    for key in b or {}:
        if key not in keys:
            keys.append(key)
    rows = []
    for key in keys:
        va = format_summary_value(key, a[key]) if key in a else "–"
        vb = format_summary_value(key, b[key]) if b is not None and key in b else "–"
        rows.append((summary_label(key), va, vb))
    return rows
