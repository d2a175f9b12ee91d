"""How the engine and the app write a memory size for people: MiB below a GiB, never "0.00 GiB"."""

from __future__ import annotations

MIB = 2**20
GIB = 2**30


def size_text(n_bytes: float) -> str:
    """Bytes as binary units: 0 -> '0 MiB', 300 kB -> '< 1 MiB', 12.4 MiB -> '12 MiB', 13.2 GiB -> '13.2 GiB'."""
    if n_bytes <= 0:
        return "0 MiB"
    mib = n_bytes / MIB
    if mib < 1:
        return "< 1 MiB"
    if round(mib) < 1000:
        return f"{mib:.0f} MiB"
    return f"{n_bytes / GIB:.1f} GiB"
