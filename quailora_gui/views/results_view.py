"""The centre of the window: the chart toolbar, the tabs (layer errors, heat map, table,
compare, training), the one-line summary under them and the finished adapter's serving
verdicts.

It holds what it shows: the layers of the current or last run (`results`), the finished run
they belong to (`displayed`) and this session's finished runs (`session`, for Compare). The
charts redraw at most every REFRESH_MS while layers stream in, and a chart on a hidden tab
is redrawn when its tab is shown.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QRect, Qt, QTimer
from PySide6.QtGui import QColor, QImage, QPainter
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..controllers.form_text import serving_verdicts_html, serving_verdicts_tooltip
from ..controllers.formatting import fmt_err, fmt_pct
from ..controllers.results import RunResults
from ..controllers.session import FinishedRun, Session
from .charts import LayerErrorChart
from .common import named, role_label, shrinkable
from .heatmap import HeatMapView
from .panels import ComparePanel
from .table import ResultsTable

REFRESH_MS = 150  # charts redraw at most this often while layers stream in


class ResultsArea(QWidget):
    def __init__(self, training_panel: QWidget, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("centrePanel")
        self.session = Session()
        self.results = RunResults()
        self.displayed: FinishedRun | None = None  # the finished run the charts show

        self.logScaleCheck = named(QCheckBox("Log scale"), "logScaleCheck")
        self.logScaleCheck.toggled.connect(self.set_log_scale)
        self.compareCombo = named(QComboBox(), "compareCombo")
        self.compareCombo.addItem("None", 0)
        # long run names widen the popup, not the window: the window fits a 1024-pixel screen
        self.compareCombo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.compareCombo.setMinimumContentsLength(9)
        self.compareCombo.view().setMinimumWidth(320)
        self.compareCombo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.compareCombo.setMaximumWidth(300)  # a wide window shows the whole run name
        self.compareCombo.currentIndexChanged.connect(self.on_compare_changed)
        self.exportAdapterButton = named(QPushButton("Export adapter…"), "exportAdapterButton")
        self.exportChartsButton = named(QPushButton("Charts…"), "exportChartsButton")
        self.exportCsvButton = named(QPushButton("CSV…"), "exportCsvButton")
        self.exportChartsButton.setToolTip("Save the layer-error chart and the heat map as PNG files.")
        self.exportCsvButton.setToolTip("Save the per-layer results as a CSV file.")
        for b in (self.exportAdapterButton, self.exportChartsButton, self.exportCsvButton):
            b.setEnabled(False)
        self.summaryLabel = role_label("", "hint", "summaryLabel")
        self.summaryLabel.setWordWrap(False)
        shrinkable(self.summaryLabel)
        self.servingLabel = role_label("", "hint", "servingLabel")  # the finished adapter's serving verdicts
        self.servingLabel.setToolTip("Which serving stacks reproduce the finished adapter (its README has the commands).")
        self.servingLabel.hide()
        tools = QHBoxLayout()
        tools.setContentsMargins(6, 2, 6, 2)
        tools.addWidget(QLabel("Compare"))
        tools.addWidget(self.compareCombo, 1)
        tools.addWidget(self.logScaleCheck)
        tools.addStretch(1)
        for button in (self.exportChartsButton, self.exportCsvButton, self.exportAdapterButton):
            tools.addWidget(button)

        self.layerErrorChart = LayerErrorChart()
        self.heatMap = HeatMapView()
        self.resultsTableWidget = ResultsTable()
        self.resultsTable = self.resultsTableWidget.view
        self.comparePanel = ComparePanel()
        self.tabs = QTabWidget()
        self.tabs.setObjectName("chartTabs")
        for widget, title in ((self.layerErrorChart, "Layer errors"), (self.heatMap, "Heat map"),
                              (self.resultsTableWidget, "Table"), (self.comparePanel, "Compare"),
                              (training_panel, "Training")):  # fmt: skip
            self.tabs.addTab(widget, title)
        self._stale: set[QWidget] = set()
        self.tabs.currentChanged.connect(self._on_tab_changed)
        self.logScaleCheck.setChecked(True)  # errors after initialization are often 10-100x smaller

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 4, 6, 0)
        layout.setSpacing(4)
        layout.addLayout(tools)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(self.summaryLabel)
        layout.addWidget(self.servingLabel)

        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(REFRESH_MS)
        self._refresh_timer.timeout.connect(self.refresh)

    # ------------------------------------------------------------------ a run
    def clear(self) -> None:
        """A run starts: nothing shown yet."""
        self.results = RunResults()
        self.displayed = None
        self.resultsTableWidget.model.set_layers([])
        self.layerErrorChart.set_results(self.results)
        self.heatMap.set_results(self.results)
        self.summaryLabel.setText("")
        self.servingLabel.setText("")
        self.servingLabel.hide()

    def add_layer(self, layer: Any) -> None:
        self.results.add(layer)
        self.resultsTableWidget.model.add_layer(layer)
        if not self._refresh_timer.isActive():
            self._refresh_timer.start()

    def expect_layers(self, n_layers: int, n_blocks: int) -> None:
        self.layerErrorChart.expect_layers(n_layers, n_blocks)

    def add_finished(self, config: Any, result: Any, show: bool = True) -> FinishedRun:
        """A run finished (or was read back from disk: `result` is then the core's
        StoredInitRun): keep it in the session, offer it for comparison, show it unless
        `show` is False (a run reopened only to be compared)."""
        run = self.session.add(config, result.layers, result.summary, result.output_dir, result.serving)
        self.compareCombo.addItem(run.name, run.number)
        if show:
            self.displayed = run
            self._show_serving(run.serving)
        self.on_compare_changed()
        return run

    def show_run(self, run: FinishedRun) -> None:
        """Show a finished run of the session again (reopened from the history, or the one
        shown before a run that was cancelled or failed): its layers, summary and verdicts."""
        self.results = RunResults(run.layers)
        self.resultsTableWidget.model.set_layers(self.results.layers)
        self.layerErrorChart.set_results(self.results)
        self.heatMap.set_results(self.results)
        self.displayed = run
        self._show_serving(run.serving)
        self.on_compare_changed()
        self.refresh(everything=True)

    def _show_serving(self, serving: list[Any]) -> None:
        self.servingLabel.setText(serving_verdicts_html(serving))
        self.servingLabel.setToolTip(serving_verdicts_tooltip(serving))
        self.servingLabel.setVisible(bool(serving))

    def stop(self) -> None:
        self._refresh_timer.stop()

    # ------------------------------------------------------------------ drawing
    def refresh(self, everything: bool = False) -> None:
        """Redraw the chart on the visible tab (all of them with `everything`); the others
        are redrawn when their tab is shown."""
        self._refresh_timer.stop()
        self._stale.update((self.layerErrorChart, self.heatMap))
        for chart in list(self._stale):
            if everything or chart is self.tabs.currentWidget():
                chart.refresh()
                self._stale.discard(chart)
        self._show_summary_line()

    def _on_tab_changed(self, _index: int) -> None:
        widget = self.tabs.currentWidget()
        if widget in self._stale:
            self._stale.discard(widget)
            widget.refresh()

    def set_log_scale(self, on: bool) -> None:
        self.layerErrorChart.set_log_scale(on)

    def _show_summary_line(self) -> None:
        """The core's summary of the layers so far, in one line under the charts."""
        if not len(self.results):
            self.summaryLabel.setText("")
            return
        s = self.results.summary()
        self.summaryLabel.setText(
            f"{len(self.results)} layers · mean calibrated error {fmt_err(s.get('mean_cal_err_before'))} → "
            f"<b>{fmt_err(s.get('mean_cal_err_after'))}</b> · {fmt_pct(s.get('mean_cal_improvement'))} of it "
            f"removed per layer on average · held-out {fmt_err(s.get('mean_heldout_err_before'))} → "
            f"<b>{fmt_err(s.get('mean_heldout_err_after'))}</b>"
        )

    def on_compare_changed(self, *_: Any) -> None:
        number = self.compareCombo.currentData() or 0
        other = self.session.get(number) if number else None
        if other is not None and other is not self.displayed:
            self.layerErrorChart.set_compare(other.results, other.name)
        else:
            self.layerErrorChart.set_compare(None)
        shown = self.displayed
        self.comparePanel.show_runs(
            shown.name if shown else "This run",
            shown.summary if shown else None,
            other.name if other else "Compared run",
            other.summary if other else None,
        )

    def grab_chart(self, widget: QWidget, caption: str = "") -> Any:
        """A chart as an image, laid out at the visible tab's size when it is hidden; with a
        caption line on top (the run it shows), so a PNG pasted into a report says what it is."""
        if not widget.isVisible():
            widget.resize(self.tabs.currentWidget().size())
            widget.ensurePolished()
        chart = widget.grab()
        if not caption:
            return chart.toImage()
        height = widget.fontMetrics().height() + 12
        image = QImage(chart.width(), chart.height() + height, QImage.Format.Format_RGB32)
        image.fill(QColor("white"))
        painter = QPainter(image)
        painter.setPen(QColor("#1e293b"))
        painter.setFont(widget.font())
        painter.drawText(QRect(10, 0, chart.width() - 20, height), Qt.AlignmentFlag.AlignVCenter, caption)
        painter.drawPixmap(0, height, chart)
        painter.end()
        image.setText("Description", caption)
        return image
