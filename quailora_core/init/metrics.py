"""Per-layer results: summaries, CSV and the terminal table. Shared by the CLI and the GUI."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, fields
from pathlib import Path

from quailora_core.events import LayerResult
from quailora_core.files import atomic_write_text

CSV_FIELDS = [f.name for f in fields(LayerResult)]


def _mean(values: list[float]) -> float:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def summarize(layers: list[LayerResult]) -> dict[str, float]:
    """Means over layers of each error figure, the mean relative improvement, total seconds."""
    out: dict[str, float] = {"layers": len(layers)}
    for key in (
        "cal_err_before",
        "cal_err_after",
        "uncal_err_before",
        "uncal_err_after",
        "heldout_err_before",
        "heldout_err_after",
    ):
        out[f"mean_{key}"] = _mean([getattr(r, key) for r in layers])
    out["mean_cal_improvement"] = _mean(
        [1.0 - r.cal_err_after / r.cal_err_before for r in layers if r.cal_err_before > 0]
    )
    out["mean_heldout_improvement"] = _mean(
        [1.0 - r.heldout_err_after / r.heldout_err_before for r in layers if r.heldout_err_before > 0]
    )
    out["seconds"] = sum(r.seconds for r in layers)
    return out


def write_csv(layers: list[LayerResult], path: str | Path) -> None:
    """One row per layer with every LayerResult field (shape as 'out x in')."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for r in layers:
        row = asdict(r)
        row["shape"] = f"{r.shape[0]}x{r.shape[1]}"
        writer.writerow(row)
    atomic_write_text(path, buffer.getvalue())


def format_table(layers: list[LayerResult]) -> str:
    """The final per-layer table the CLI prints on a terminal."""
    head = f"{'layer':<42} {'shape':>11} {'cal before':>11} {'cal after':>10} {'held-out':>9} {'uncal':>7} {'s':>6}"
    lines = [head, "-" * len(head)]
    for r in layers:
        shape = f"{r.shape[0]}x{r.shape[1]}"
        lines.append(
            f"{r.name[-42:]:<42} {shape:>11} {r.cal_err_before:>11.3e} {r.cal_err_after:>10.3e} "
            f"{r.heldout_err_after:>9.2e} {r.uncal_err_after:>7.4f} {r.seconds:>6.2f}"
        )
    s = summarize(layers)
    lines.append("-" * len(head))
    lines.append(
        f"mean calibrated error {s['mean_cal_err_before']:.3e} -> {s['mean_cal_err_after']:.3e} "
        f"({100 * s['mean_cal_improvement']:.1f}% lower); held-out {s['mean_heldout_err_before']:.3e} -> "
        f"{s['mean_heldout_err_after']:.3e}"
    )
    return "\n".join(lines)
