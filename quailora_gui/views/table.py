"""Sortable, filterable table of the per-layer results (QTableView over a table model)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtWidgets import QHBoxLayout, QHeaderView, QLabel, QLineEdit, QTableView, QVBoxLayout, QWidget

from ..controllers.formatting import fmt_err, fmt_pct
from ..controllers.results import improvement, layer_tooltip
from .common import named

SORT_ROLE = Qt.ItemDataRole.UserRole

# (header, raw value getter, display formatter)
COLUMNS: list[tuple[str, Callable[[Any], Any], Callable[[Any], str]]] = [
    ("#", lambda r: r.index, str),
    ("Layer", lambda r: r.name, str),
    ("Block", lambda r: r.block, str),
    ("Module", lambda r: r.module, str),
    ("Shape", lambda r: tuple(r.shape), lambda s: "×".join(str(v) for v in s)),
    ("Cal. before", lambda r: r.cal_err_before, fmt_err),
    ("Cal. after", lambda r: r.cal_err_after, fmt_err),
    ("Removed", lambda r: improvement(r.cal_err_before, r.cal_err_after), fmt_pct),
    ("Held-out before", lambda r: r.heldout_err_before, fmt_err),
    ("Held-out after", lambda r: r.heldout_err_after, fmt_err),
    ("Weight before", lambda r: r.uncal_err_before, fmt_err),
    ("Weight after", lambda r: r.uncal_err_after, fmt_err),
    ("Seconds", lambda r: r.seconds, lambda s: f"{s:.2f}"),
]
TEXT_COLUMNS = {1, 3}


class ResultsTableModel(QAbstractTableModel):
    """One row per LayerResult, in the order they are handed over."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._rows: list[Any] = []

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section][0]
        return None

    def data(
        self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if not index.isValid():
            return None
        row = self._rows[index.row()]
        _, get, fmt = COLUMNS[index.column()]
        if role == Qt.ItemDataRole.DisplayRole:
            value = get(row)
            return "–" if value is None else fmt(value)
        if role == SORT_ROLE:
            value = get(row)
            if isinstance(value, tuple):
                return value[0] * value[1]
            return float("-inf") if value is None else value
        if role == Qt.ItemDataRole.TextAlignmentRole:
            if index.column() in TEXT_COLUMNS:
                return int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ToolTipRole:
            return layer_tooltip(row)
        return None

    def set_layers(self, layers: list[Any]) -> None:
        self.beginResetModel()
        self._rows = list(layers)
        self.endResetModel()

    def add_layer(self, layer: Any) -> None:
        n = len(self._rows)
        self.beginInsertRows(QModelIndex(), n, n)
        self._rows.append(layer)
        self.endInsertRows()

    def layer(self, row: int) -> Any:
        return self._rows[row]


class ResultsTable(QWidget):
    """Filter box + sortable table; `view` has objectName resultsTable."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = ResultsTableModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.proxy.setFilterKeyColumn(1)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.view = named(QTableView(), "resultsTable")
        self.view.setModel(self.proxy)
        self.view.setSortingEnabled(True)
        self.view.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.view.setAlternatingRowColors(True)
        self.view.setSelectionBehavior(QTableView.SelectionBehavior.SelectRows)
        self.view.verticalHeader().setVisible(False)
        self.view.verticalHeader().setDefaultSectionSize(22)
        header = self.view.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.filterEdit = named(QLineEdit(), "resultsFilterEdit")
        self.filterEdit.setPlaceholderText("Filter layers, e.g. mlp or q_proj")
        self.filterEdit.setClearButtonEnabled(True)
        self.filterEdit.textChanged.connect(self.proxy.setFilterFixedString)
        top = QHBoxLayout()
        top.addWidget(QLabel("Filter"))
        top.addWidget(self.filterEdit, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(top)
        layout.addWidget(self.view)
