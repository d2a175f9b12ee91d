"""The block x module heat map of the share of calibrated error removed (pyqtgraph).

It draws a `RunResults` as it is handed one and never computes metrics; hover a cell for
the layer's exact numbers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF
from PySide6.QtGui import QCursor, QFont, QFontMetrics
from PySide6.QtWidgets import QToolTip, QVBoxLayout, QWidget

from ..controllers.formatting import fmt_pct
from ..controllers.labels import TOOLTIPS
from ..controllers.results import RunResults, layer_tooltip, short_module_names
from .charts import _layout_widget, _style_plot


class HeatMapView(QWidget):
    """Block x module map of the share of calibrated error removed, 1 - after/before."""

    MAX_CELL_LABELS = 160

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("heatMap")
        self.setToolTip(TOOLTIPS["heatMap"])
        self.results = RunResults()
        self.blocks: list[int] = []
        self.modules: list[str] = []
        self.matrix = np.zeros((0, 0))
        self.last_tooltip = ""
        self._labels: dict[tuple[int, int], pg.TextItem] = {}
        self._shape: Any = (0, 0)
        self.module_ticks: list[tuple[float, str]] = []  # the column labels drawn (x, short name)
        self._font = QFont()
        self._font.setPointSize(8)

        self.view = _layout_widget(self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.view)
        self.plot = self.view.addPlot(row=0, col=0)
        _style_plot(self.plot)
        self.plot.showGrid(x=False, y=False)
        self.plot.setTitle(
            "<span style='color:#1e3a8a; font-weight:bold'>Share of calibrated error removed, 1 − after / before"
            "</span>",
            size="10pt",
        )
        self.plot.setLabel("bottom", "module")
        self.plot.setLabel("left", "block")
        self.plot.invertY(True)
        self.plot.setMouseEnabled(False, False)
        self.plot.hideButtons()
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image)
        self.colorbar = pg.ColorBarItem(
            values=(0.0, 1.0),
            colorMap=pg.colormap.get("viridis"),
            label="share removed",
            interactive=False,
            width=16,
        )
        self.colorbar.setImageItem(self.image, insert_in=self.plot)
        self.view.scene().sigMouseMoved.connect(self._on_mouse_moved)
        self.refresh()

    def set_results(self, results: RunResults) -> None:
        self.results = results
        self.refresh()

    def refresh(self) -> None:
        self.blocks = self.results.blocks()
        self.modules = self.results.modules()
        grid = self.results.heat_matrix(self.blocks, self.modules)
        self.matrix = np.array(
            [[np.nan if v is None else v for v in row] for row in grid], dtype=float
        ).reshape(len(self.blocks), len(self.modules))
        if self.matrix.size == 0:
            for item in self._labels.values():
                self.plot.removeItem(item)
            self._labels = {}
            self._shape = (0, 0)
            self.image.clear()
            self.plot.getAxis("bottom").setTicks([[], []])
            self.plot.getAxis("left").setTicks([[], []])
            return
        self.image.setImage(self.matrix, autoLevels=False, levels=(0.0, 1.0))
        shape = (tuple(self.blocks), tuple(self.modules))
        if shape != self._shape:  # axes and range only change when the grid grows
            self._shape = shape
            self.image.setRect(0, 0, len(self.modules), len(self.blocks))
            self._set_module_ticks()
            step = max(1, math.ceil(len(self.blocks) / 24))
            self.plot.getAxis("left").setTicks(
                [[(i + 0.5, str(b)) for i, b in enumerate(self.blocks) if i % step == 0], []]
            )
            self.plot.setRange(xRange=(0, len(self.modules)), yRange=(0, len(self.blocks)), padding=0.02)
            for item in self._labels.values():
                self.plot.removeItem(item)
            self._labels = {}
        if self.matrix.size > self.MAX_CELL_LABELS:
            return
        for i in range(len(self.blocks)):
            for j in range(len(self.modules)):
                v = self.matrix[i, j]
                if np.isnan(v) or (i, j) in self._labels and self._labels[(i, j)].value == v:
                    continue
                label = self._labels.get((i, j))
                if label is None:
                    label = pg.TextItem("", anchor=(0.5, 0.5))
                    label.setFont(self._font)
                    label.setPos(j + 0.5, i + 0.5)
                    self.plot.addItem(label)
                    self._labels[(i, j)] = label
                label.value = v
                label.setColor("#111827" if v > 0.6 else "#f8fafc")
                label.setText(fmt_pct(float(v), 0))

    def _set_module_ticks(self) -> None:
        """Column labels that fit: short module names, and only every k-th when even those
        would overlap at the chart's width (hover a cell for its full name)."""
        names = short_module_names(self.modules)
        width = self.plot.vb.width() or self.width()
        widest = max((QFontMetrics(self.font()).horizontalAdvance(n) for n in names), default=0) + 12
        step = max(1, math.ceil(widest * len(names) / width)) if width > 0 else 1
        self.module_ticks = [(j + 0.5, n) for j, n in enumerate(names) if j % step == 0]
        self.plot.getAxis("bottom").setTicks([self.module_ticks, []])

    def resizeEvent(self, event: Any) -> None:  # noqa: N802
        super().resizeEvent(event)
        if self.modules:
            self._set_module_ticks()

    def value(self, block: int, module: str) -> float | None:
        """The improvement drawn in the cell of (block, module), None if empty."""
        try:
            v = self.matrix[self.blocks.index(block), self.modules.index(module)]
        except ValueError:
            return None
        return None if np.isnan(v) else float(v)

    def tooltip_at(self, x: float, y: float) -> str:
        if not (0 <= x < len(self.modules) and 0 <= y < len(self.blocks)):
            return ""
        layer = self.results.cell_layer(self.blocks[int(y)], self.modules[int(x)])
        return "" if layer is None else layer_tooltip(layer)

    def _on_mouse_moved(self, pos: QPointF) -> None:
        if not self.plot.vb.sceneBoundingRect().contains(pos):
            QToolTip.hideText()
            return
        p = self.plot.vb.mapSceneToView(pos)
        text = self.tooltip_at(p.x(), p.y())
        self.last_tooltip = text
        if text:
            QToolTip.showText(QCursor.pos(), text, self)
        else:
            QToolTip.hideText()
