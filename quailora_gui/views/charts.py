"""Live per-layer charts (pyqtgraph): the error bars per layer (the heat map is in heatmap.py).

The charts draw a `RunResults` (and optionally a compared run) as they are handed one;
they never compute metrics. Hover anywhere over a bar or cell for the exact numbers.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QEvent, QObject, QPointF, Qt
from PySide6.QtGui import QColor, QCursor
from PySide6.QtWidgets import QToolTip, QVBoxLayout, QWidget

from ..controllers.labels import TOOLTIPS
from ..controllers.results import BLOCK_GAP, RunResults, layer_tooltip

BEFORE = QColor("#a9bcd6")
AFTER = QColor("#2563eb")
HELD_BEFORE = QColor("#c7d2c4")
HELD_AFTER = QColor("#0f9f6e")
MEAN_BEFORE = QColor("#64748b")
MEAN_AFTER = QColor("#1e3a8a")
COMPARE = QColor("#ea580c")
BAR_WIDTH = 0.4

# (field, series key) per plot: calibration on top, held-out below.
SERIES = {
    "cal": ("cal_err_before", "cal_err_after"),
    "heldout": ("heldout_err_before", "heldout_err_after"),
}


def _style_plot(plot: pg.PlotItem) -> None:
    plot.showGrid(x=False, y=True, alpha=0.25)
    plot.setMenuEnabled(False)
    for name in ("left", "bottom"):
        axis = plot.getAxis(name)
        axis.setPen(pg.mkPen("#94a3b8"))
        axis.setTextPen(pg.mkPen("#334155"))


class ErrorAxis(pg.AxisItem):
    """Left axis whose log mode labels only whole decades (minor ticks stay unlabelled)."""

    def logTickValues(self, minVal, maxVal, size, stdTicks):  # noqa: N802, N803 (pyqtgraph API)
        first, last = math.floor(minVal), math.ceil(maxVal)
        decades = [float(v) for v in range(first, last + 1) if minVal <= v <= maxVal]
        minor = [v + math.log10(k) for v in range(first, last) for k in range(2, 10)]
        minor = [m for m in minor if minVal < m < maxVal]
        if not decades:  # less than a decade visible: label the minor ticks instead
            return [(None, minor)]
        return [(1.0, decades), (None, minor)]


class _NoToolTip(QObject):
    """Swallows the view's own tooltip events: the charts show per-bar tooltips on hover."""

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802
        return event.type() == QEvent.Type.ToolTip


def _layout_widget(owner: QWidget) -> pg.GraphicsLayoutWidget:
    w = pg.GraphicsLayoutWidget()
    w.setBackground("w")
    w.ci.setContentsMargins(6, 6, 10, 6)
    owner._tooltip_filter = _NoToolTip(owner)
    w.installEventFilter(owner._tooltip_filter)
    w.viewport().installEventFilter(owner._tooltip_filter)
    return w


class LayerErrorChart(QWidget):
    """Calibrated (top) and held-out (bottom) relative error per layer, before and after.

    Bars are in model order, grouped by block; dashed/solid lines are the running means;
    orange diamonds are the compared run's 'after' values. `bars[(plot, 'before'|'after')]`
    are the BarGraphItems, `values[(plot, ...)]` the numbers they draw (linear units).
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("layerErrorChart")
        self.setToolTip(TOOLTIPS["layerErrorChart"])
        self.results = RunResults()
        self.compare: RunResults | None = None
        self.compare_name = ""
        self.log_scale = False
        self.values: dict[tuple[str, str], list[float]] = {}
        self.bars: dict[tuple[str, str], pg.BarGraphItem] = {}
        self.means: dict[tuple[str, str], pg.PlotDataItem] = {}
        self.compare_items: dict[str, pg.PlotDataItem] = {}
        self.last_tooltip = ""
        self._x_extent: Any = ()
        self._legend_key: Any = None
        self.expected_last_x = 0.0  # keep room for the layers still to come
        self._centres: list[tuple[float, int]] | None = None

        self.view = _layout_widget(self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.view)

        self.plots: dict[str, pg.PlotItem] = {}
        titles = {"cal": "Calibrated error", "heldout": "Held-out error"}
        palettes = {"cal": (BEFORE, AFTER), "heldout": (HELD_BEFORE, HELD_AFTER)}
        self._titles = titles
        self._palettes = palettes
        for row, key in enumerate(("cal", "heldout")):
            plot = self.view.addPlot(row=row, col=0, axisItems={"left": ErrorAxis("left")})
            _style_plot(plot)
            plot.setLabel("left", "rel. output error ‖ΔW·X‖²/‖W·X‖²")  # ΔW = W − Q − BA; the tooltip says it in words
            plot.getAxis("left").enableAutoSIPrefix(False)
            c_before, c_after = palettes[key]
            for which, color in (("before", c_before), ("after", c_after)):
                bar = pg.BarGraphItem(
                    x=[], height=[], width=BAR_WIDTH, brush=pg.mkBrush(color), pen=pg.mkPen(None)
                )
                bar.setObjectName(f"{key}_{which}")
                plot.addItem(bar)
                self.bars[(key, which)] = bar
            for which, color, style in (
                ("before", MEAN_BEFORE, Qt.PenStyle.DashLine),
                ("after", MEAN_AFTER, Qt.PenStyle.SolidLine),
            ):
                line = pg.PlotDataItem([], [], pen=pg.mkPen(color, width=2, style=style))
                plot.addItem(line)
                self.means[(key, which)] = line
            cmp_item = pg.PlotDataItem(
                [],
                [],
                pen=None,
                symbol="d",
                symbolSize=9,
                symbolBrush=pg.mkBrush(COMPARE),
                symbolPen=pg.mkPen("w"),
            )
            plot.addItem(cmp_item)
            self.compare_items[key] = cmp_item
            self.plots[key] = plot
        self.placeholder = pg.TextItem(
            "Press Run: each layer's error before and after appears here as it is initialized.",
            color="#64748b",
            anchor=(0.5, 0.5),
        )
        self.plots["cal"].addItem(self.placeholder, ignoreBounds=True)
        self.plots["heldout"].setXLink(self.plots["cal"])
        self.plots["heldout"].setLabel("bottom", "layers in model order, grouped by block")
        self.view.ci.layout.setRowStretchFactor(0, 3)
        self.view.ci.layout.setRowStretchFactor(1, 2)
        self.view.scene().sigMouseMoved.connect(self._on_mouse_moved)
        self.refresh()

    # ------------------------------------------------------------------ data
    def set_results(self, results: RunResults) -> None:
        self.results = results
        self.expected_last_x = 0.0
        self.refresh()

    def expect_layers(self, n_layers: int, n_blocks: int) -> None:
        """Size the x axis for the whole run at its start, so bars fill it from the left."""
        gaps = BLOCK_GAP * max(0, n_blocks - 1) if n_blocks and n_layers % n_blocks == 0 else 0.0
        self.expected_last_x = max(0.0, n_layers - 1 + gaps)
        self._x_extent = ()

    def set_compare(self, results: RunResults | None, name: str = "") -> None:
        self.compare = results
        self.compare_name = name
        self.refresh()

    def set_log_scale(self, on: bool) -> None:
        self.log_scale = bool(on)
        self._x_extent = ()  # redo the ranges
        self._centres = None
        for plot in self.plots.values():
            plot.setLogMode(False, self.log_scale)
            plot.getAxis("left").setStyle(maxTextLevel=0 if self.log_scale else 2)
            plot.getAxis("left").picture = None
        self.refresh()

    def _update_legends(self) -> None:
        def swatch(color: QColor, glyph: str) -> str:
            return f"<span style='color:{color.name()}'>{glyph}</span>"

        for key, (c_before, c_after) in self._palettes.items():
            parts = [
                f"{swatch(c_before, '■')} before (plain QLoRA)",
                f"{swatch(c_after, '■')} after init",
                f"{swatch(MEAN_BEFORE, '╌╌')} running mean, before",
                f"{swatch(MEAN_AFTER, '━━')} running mean, after",
            ]
            if self.compare is not None:
                parts.append(f"{swatch(COMPARE, '◆')} {escape(self.compare_name)}, after")
            self.plots[key].setTitle(
                f"<span style='color:#1e3a8a; font-weight:bold'>{self._titles[key]}</span>&nbsp;&nbsp;&nbsp;&nbsp;"
                "<span style='color:#334155; font-weight:normal'>"
                + "&nbsp;&nbsp;&nbsp;".join(parts)
                + "</span>",
                size="9pt",
            )

    def entries(self) -> list[str]:
        """Layer names in the order the bars are drawn (one entry per layer)."""
        return [layer.name for layer in self.results.layers]

    def refresh(self) -> None:
        xs = self.results.x_positions()
        layers = self.results.layers
        all_values = [v for key in SERIES.values() for f in key for v in self.results.values(f) if v > 0]
        if self.compare is not None:  # a compared run's smaller errors must not be drawn pinned at the floor
            all_values += [v for key in SERIES.values() for v in self.compare.values(key[1]) if v > 0]
        floor = min(all_values) / 2 if all_values else 1e-6
        base = math.floor(math.log10(floor)) if self.log_scale else 0.0
        for key, (f_before, f_after) in SERIES.items():
            for which, field, shift in (
                ("before", f_before, -BAR_WIDTH / 2),
                ("after", f_after, BAR_WIDTH / 2),
            ):
                values = self.results.values(field)
                self.values[(key, which)] = values
                bar_x = [x + shift for x in xs]
                if self.log_scale:
                    heights = [math.log10(max(v, floor)) - base for v in values]
                    self.bars[(key, which)].setOpts(x=bar_x, height=heights, y0=base, width=BAR_WIDTH)
                else:
                    self.bars[(key, which)].setOpts(x=bar_x, height=values, y0=0.0, width=BAR_WIDTH)
                mean = self.results.running_mean(field)
                self.means[(key, which)].setData(
                    xs, [max(m, floor) for m in mean] if self.log_scale else mean
                )
            cx, cy = [], []
            if self.compare is not None:
                for x, layer in zip(xs, layers, strict=True):
                    other = self.compare.get(layer.name)
                    if other is not None:
                        cx.append(x + BAR_WIDTH / 2)
                        value = float(getattr(other, f_after))
                        cy.append(max(value, floor) if self.log_scale else value)
            self.compare_items[key].setData(cx, cy)
        # Only what changed is touched again: each axis/range/title update costs a relayout.
        extent = (xs[0], max(xs[-1], self.expected_last_x)) if xs else None
        centres = self.results.block_centres()
        if centres != self._centres:
            self._centres = centres
            self._set_ticks()
        if extent != self._x_extent:
            self._x_extent = extent
            self.placeholder.setVisible(not layers)
            for plot in self.plots.values():
                if extent is None:
                    plot.setRange(xRange=(0, 1), yRange=(0, 1), padding=0)
                else:
                    plot.setXRange(extent[0] - 0.8, extent[1] + 0.8, padding=0)
                    plot.enableAutoRange(x=False, y=True)
            self.placeholder.setPos(0.5, 0.5)
        legend_key = (self.compare is not None, self.compare_name)
        if legend_key != self._legend_key:
            self._legend_key = legend_key
            self._update_legends()

    def _set_ticks(self) -> None:
        centres = self.results.block_centres()
        step = max(1, math.ceil(len(centres) / 16))
        ticks = [
            (x, f"block {b}" if len(centres) <= 8 else str(b))
            for i, (x, b) in enumerate(centres)
            if i % step == 0
        ]
        for plot in self.plots.values():
            plot.getAxis("bottom").setTicks([ticks, []])

    # ------------------------------------------------------------------ hover
    def tooltip_at(self, x: float) -> str:
        """Tooltip text for the bar slot at view coordinate x ('' in a gap)."""
        layer = self.results.nearest(x)
        if layer is None:
            return ""
        other = self.compare.get(layer.name) if self.compare is not None else None
        return layer_tooltip(layer, other, self.compare_name)

    def _on_mouse_moved(self, pos: QPointF) -> None:
        for plot in self.plots.values():
            if plot.sceneBoundingRect().contains(pos) and plot.vb.sceneBoundingRect().contains(pos):
                x = plot.vb.mapSceneToView(pos).x()
                text = self.tooltip_at(x)
                self.last_tooltip = text
                if text:
                    QToolTip.showText(QCursor.pos(), text, self)
                else:
                    QToolTip.hideText()
                return
        QToolTip.hideText()
