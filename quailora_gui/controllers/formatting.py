"""Number formatting shared by every view, so a figure reads the same everywhere."""

from __future__ import annotations

import math

from quailora_core.units import GIB, size_text


def fmt_err(value: float | None) -> str:
    """A relative error with 4 significant digits: 0.01234, 1.234e-05; '–' when unknown."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4g}"


def fmt_pct(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage: 0.4213 -> '42.1 %'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * 100:.{digits}f} %"


def fmt_count(n: int | float | None) -> str:
    """A large count with a unit prefix: 1234 -> '1.2 k', 6_738_415_616 -> '6.74 B'."""
    if n is None:
        return "–"
    n = float(n)
    for size, unit, digits in ((1e12, "T", 2), (1e9, "B", 2), (1e6, "M", 2), (1e3, "k", 1)):
        if abs(n) >= size:
            return f"{n / size:.{digits}f} {unit}"
    return f"{int(n)}"


def fmt_int(n: int | None) -> str:
    """An integer with thousands separators: 65536 -> '65,536'."""
    return "–" if n is None else f"{int(n):,}"


def fmt_duration(seconds: float | None) -> str:
    """A duration for people: '0.4 s', '12 s', '3 min 05 s', '1 h 02 min'."""
    if seconds is None or seconds != seconds or seconds == math.inf:
        return "–"
    seconds = max(0.0, float(seconds))
    if seconds < 0.05:
        return "< 0.1 s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def fmt_gib(gib: float | None) -> str:
    """A memory size given in GiB (the engine's unit): 0.34 -> '348 MiB', 0.0001 -> '< 1 MiB', 12.3 -> '12.3 GiB'."""
    if gib is None:
        return "–"
    return size_text(gib * GIB)
