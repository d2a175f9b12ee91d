"""What the form shows about the check's findings, as text: the model summary, the data
preview and its figures, the estimate, the token count and the serving warnings (and the
finished adapter's serving verdicts, for the results view). Plain functions of the core's
records (ModelSummary, DataPreview, RunEstimate, StackVerdict); the views only set these texts."""

from __future__ import annotations

from html import escape
from typing import Any

from .formatting import fmt_count, fmt_duration, fmt_gib, fmt_int

GREY = "#64748b"
AMBER = "#92400e"  # warnings: the run can go ahead, but the user should know
TABULAR = ("json", "csv", "parquet", "hub")  # preview kinds whose rows are table rows


def muted(text: str) -> str:
    return f"<span style='color:{GREY}'>{escape(text)}</span>"


def summary_html(s: Any | None) -> str:
    if s is None:
        return muted("The model's summary appears here once it can be read.")
    arch = f"{escape(str(s.architecture))} <span style='color:{GREY}'>({escape(str(s.model_type))})</span>"
    grey = f"style='color:{GREY}; padding-right:6px'"
    rows = (
        f"<tr><td {grey}>Architecture</td><td colspan='3'>{arch}</td></tr>"
        f"<tr><td {grey}>Parameters</td><td style='padding-right:14px'>{fmt_count(s.n_params)}</td>"
        f"<td {grey}>Blocks</td><td>{fmt_int(s.n_blocks)}</td></tr>"
        f"<tr><td {grey}>Hidden / MLP</td><td style='padding-right:14px'>{fmt_int(s.hidden_size)} / "
        f"{fmt_int(s.intermediate_size)}</td><td {grey}>Vocabulary</td><td>{fmt_int(s.vocab_size)}</td></tr>"
    )
    return f"<table cellspacing='0' cellpadding='1'>{rows}</table>"


def preview_text(p: Any | None) -> str:
    """The first rows, numbered, one line each."""
    if p is None:
        return ""
    parts = []
    for i, row in enumerate(p.rows, start=1):
        text = " ".join(str(row).split())
        parts.append(f"{i:>2}│ {text[:240]}{'…' if len(text) > 240 else ''}")
    return "\n".join(parts)


def preview_stats(p: Any | None) -> str:
    """Rows, characters, tokens, files and columns of the source, in one line."""
    if p is None:
        return ""
    columns = list(p.columns or [])
    stats = []
    unit = "rows" if p.kind in TABULAR else "paragraphs"
    approx = "" if getattr(p, "exact", True) else "up to "
    if p.n_rows is not None:
        stats.append(f"{fmt_int(p.n_rows)} {unit}")
    if p.n_chars is not None:
        stats.append(f"{approx}{fmt_count(p.n_chars)} characters")
    if p.estimated_tokens is not None:
        stats.append(f"≈ {fmt_count(p.estimated_tokens)} tokens")
    if getattr(p, "n_files", 1) > 1:
        stats.append(f"{p.n_files} files")
    if len(columns) > 1:
        stats.append(f"columns: {', '.join(columns)}")
    return " · ".join(stats)


def source_tokens(p: Any | None) -> int | None:
    """Tokens the source holds, when the preview counted all of it."""
    if p is None or not getattr(p, "exact", True):
        return None
    return p.estimated_tokens


def estimate_html(estimate: Any | None, error: str = "") -> str:
    if estimate is None:
        return muted(error or "Appears once the model can be read.")
    html = f"≈ <b>{fmt_gib(estimate.peak_memory_gb)}</b> peak memory · ≈ <b>{fmt_duration(estimate.seconds)}</b>"
    if getattr(estimate, "note", ""):
        html += f"<br>{muted(estimate.note)}"
    return html


def token_count_html(n: int, length: int, held: int, tokens: int | None = None, available: int | None = None,
                     warnings: list[str] | tuple[str, ...] = ()) -> str:  # fmt: skip
    """'Uses n × length = tokens calibration tokens, plus the held-out ones', a warning when the
    source holds fewer, and the estimate's warnings (too few tokens for the layers' inputs)."""
    tokens = tokens or n * length
    text = f"Uses {fmt_int(n)} × {fmt_int(length)} = <b>{fmt_int(tokens)}</b> calibration tokens"
    if held:
        text += f", plus {fmt_int(held)} × {fmt_int(length)} = {fmt_int(held * length)} held out"
    text += "."
    if available is not None and available < (n + held) * length:
        text += (
            f"<br><span style='color:{AMBER}'>The source has only about {fmt_count(available)} tokens: "
            "the engine will use what there is and say so in the log.</span>"
        )
    for warning in warnings:
        text += f"<br><span style='color:{AMBER}'>{escape(warning[:1].upper() + warning[1:])}.</span>"
    return text


def serving_warnings_html(warnings: list[str] | tuple[str, ...]) -> str:
    """The settings' serving warnings (serving.stacks.run_warnings), amber; empty when none."""
    return "<br>".join(f"<span style='color:{AMBER}'>{escape(w)}</span>" for w in warnings)


def serving_verdicts_html(verdicts: list[Any] | tuple[Any, ...]) -> str:
    """One line for all serving stacks of a finished adapter: which reproduce it (plain) and
    which do not (amber, with the short reason); the full reasons go in the tooltip, so the
    charts above keep their room."""
    parts = []
    for v in verdicts:
        if v.reproduces:
            parts.append(f"{escape(v.name)}: reproduces it")
        else:
            short = "will not load it" if not v.loads else "will not reproduce it"
            parts.append(f"<span style='color:{AMBER}'>{escape(v.name)}: {short}</span>")
    return ("Serving: " + " · ".join(parts) + " (hover for why; the adapter's README has the commands)") if parts else ""


def serving_verdicts_tooltip(verdicts: list[Any] | tuple[Any, ...]) -> str:
    """Every stack's full verdict, one per line: reproduces it, or why not."""
    return "\n\n".join(v.line() for v in verdicts)
