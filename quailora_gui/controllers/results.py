"""Per-layer results of one run, arranged for the charts, the heat map and the table.

Only arrangement happens here (order, grouping, lookup); the numbers are the engine's
`LayerResult` fields, untouched. The two derived figures a chart needs, the share of
error removed (1 - after/before) and the running mean, are plain arithmetic on them.
"""

from __future__ import annotations

import math
from bisect import insort
from typing import Any

from .formatting import fmt_err, fmt_pct

# Gap, in bar slots, left between two blocks on the per-layer chart.
BLOCK_GAP = 1.0


def improvement(before: float, after: float) -> float | None:
    """Share of the error the initialization removed: 1 - after/before (None if before is 0)."""
    if not before or math.isnan(before) or math.isnan(after):
        return None
    return 1.0 - after / before


class RunResults:
    """LayerResult objects of one run, kept in model order as they arrive."""

    def __init__(self, layers: list[Any] | None = None) -> None:
        self._layers: list[Any] = []
        self._by_name: dict[str, Any] = {}
        for layer in layers or []:
            self.add(layer)

    # ------------------------------------------------------------------ contents
    def add(self, layer: Any) -> int:
        """Insert a LayerResult in model order; return its position."""
        if layer.name in self._by_name:  # a layer reported twice replaces the first report
            self._layers.remove(self._by_name[layer.name])
        self._by_name[layer.name] = layer
        insort(self._layers, layer, key=lambda r: r.index)
        return self._layers.index(layer)

    def clear(self) -> None:
        self._layers.clear()
        self._by_name.clear()

    def __len__(self) -> int:
        return len(self._layers)

    @property
    def layers(self) -> list[Any]:
        """Layers in model order (by index)."""
        return list(self._layers)

    def get(self, name: str) -> Any | None:
        return self._by_name.get(name)

    # ------------------------------------------------------------------ arrangement
    def x_positions(self) -> list[float]:
        """One x per layer in model order, with a gap between blocks."""
        xs: list[float] = []
        x = 0.0
        prev_block = None
        for layer in self._layers:
            if prev_block is not None and layer.block != prev_block:
                x += BLOCK_GAP
            xs.append(x)
            x += 1.0
            prev_block = layer.block
        return xs

    def block_centres(self) -> list[tuple[float, int]]:
        """(x of the middle of a block's bars, block number) for the axis ticks."""
        groups: dict[int, list[float]] = {}
        for x, layer in zip(self.x_positions(), self._layers, strict=True):
            groups.setdefault(layer.block, []).append(x)
        return [((xs[0] + xs[-1]) / 2, block) for block, xs in groups.items()]

    def values(self, field: str) -> list[float]:
        return [float(getattr(layer, field)) for layer in self._layers]

    def blocks(self) -> list[int]:
        return sorted({layer.block for layer in self._layers})

    def modules(self) -> list[str]:
        """Distinct module names in model order (order of first appearance)."""
        seen: dict[str, None] = {}
        for layer in self._layers:
            seen.setdefault(layer.module, None)
        return list(seen)

    def improvements(
        self, before: str = "cal_err_before", after: str = "cal_err_after"
    ) -> list[float | None]:
        return [improvement(getattr(r, before), getattr(r, after)) for r in self._layers]

    def heat_matrix(
        self, blocks: list[int] | None = None, modules: list[str] | None = None
    ) -> list[list[float | None]]:
        """Rows = blocks, columns = modules: the improvement, None where no layer (yet)."""
        blocks = self.blocks() if blocks is None else blocks
        modules = self.modules() if modules is None else modules
        row = {b: i for i, b in enumerate(blocks)}
        col = {m: j for j, m in enumerate(modules)}
        grid: list[list[float | None]] = [[None] * len(modules) for _ in blocks]
        for layer in self._layers:
            if layer.block in row and layer.module in col:
                grid[row[layer.block]][col[layer.module]] = improvement(
                    layer.cal_err_before, layer.cal_err_after
                )
        return grid

    def cell_layer(self, block: int, module: str) -> Any | None:
        for layer in self._layers:
            if layer.block == block and layer.module == module:
                return layer
        return None

    def running_mean(self, field: str) -> list[float]:
        """Mean of `field` over the layers up to and including each one, in model order."""
        out: list[float] = []
        total = 0.0
        for i, value in enumerate(self.values(field), start=1):
            total += value
            out.append(total / i)
        return out

    def nearest(self, x: float) -> Any | None:
        """The layer whose bar slot contains x (None in a gap or outside)."""
        for xi, layer in zip(self.x_positions(), self._layers, strict=True):
            if xi - 0.5 <= x < xi + 0.5:
                return layer
        return None

    def summary(self) -> dict[str, Any]:
        """The core's summary of these layers (means, total seconds)."""
        from quailora_core.init.metrics import summarize

        return summarize(self.layers)


def layer_tooltip(layer: Any, compare: Any | None = None, compare_name: str = "") -> str:
    """Exact numbers of one layer for a hover tooltip (plain text, one figure per line)."""
    shape = "×".join(str(s) for s in layer.shape)
    lines = [
        f"{layer.name}  ({shape})",
        f"block {layer.block} · {layer.module} · layer #{layer.index}",
        f"calibrated error  before {fmt_err(layer.cal_err_before)}  after {fmt_err(layer.cal_err_after)}"
        f"  ({fmt_pct(improvement(layer.cal_err_before, layer.cal_err_after))} removed)",
        f"held-out error    before {fmt_err(layer.heldout_err_before)}  after {fmt_err(layer.heldout_err_after)}",
        f"weight error      before {fmt_err(layer.uncal_err_before)}  after {fmt_err(layer.uncal_err_after)}",
        f"time {layer.seconds:.2f} s",
    ]
    if compare is not None:
        lines.append(
            f"{compare_name or 'compared run'}: after {fmt_err(compare.cal_err_after)}, "
            f"held-out after {fmt_err(compare.heldout_err_after)}"
        )
    return "\n".join(lines)


def short_module_names(modules: list[str]) -> list[str]:
    """The shortest dotted suffix of each module name that still tells them apart
    ("self_attn.q_proj" -> "q_proj", "mlp.experts.0.up_proj" -> "0.up_proj" beside expert 1's):
    the heat map's column labels, which must fit a narrow window; its tooltips keep the full name."""
    parts = [m.split(".") for m in modules]
    depth = [1] * len(modules)
    while True:
        names = [".".join(p[-d:]) for p, d in zip(parts, depth, strict=True)]
        seen: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            seen.setdefault(name, []).append(i)
        clashes = [i for same in seen.values() if len(same) > 1 for i in same if depth[i] < len(parts[i])]
        if not clashes:
            return names
        for i in clashes:
            depth[i] += 1
