"""The run form: model, calibration data, quantization, LoRA, method, output.

It shows a RunConfig and turns edits back into one (`to_config`), both through the one
field table `controllers.form_fields.FIELDS` (widget name, run-file path, kind). Settings
the form does not show (training settings, ...) are carried over from the config last set,
so a run file opened and saved again keeps every field. It computes nothing: the model
summary, the data preview, the estimate, the serving warnings and the per-field errors come
in a `CheckReport`.
"""

from __future__ import annotations

import copy
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QLabel,
    QLineEdit,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from quailora_core.config import CALIBRATED_METHODS, ITERATIVE_METHODS

from ..controllers import checks, form_text
from ..controllers import form_fields as ff
from ..controllers.labels import DEMO_CALIBRATION_LABEL, DEMO_MODEL_LABEL
from .common import restyle, set_error
from .form_sections import build_all
from .form_targets import TargetsEditor

# Methods whose solver uses the calibration inputs (the others ignore inputs and damping).
PATH_EDITS = ((checks.MODEL, "modelPathEdit"), (checks.CALIBRATION, "calibrationPathEdit"),
              (checks.OUTPUT, "outputPathEdit"))  # fmt: skip


class RunForm(QWidget):
    """Left panel. Emits `changed` after any edit (the window debounces its checks)."""

    changed = Signal()
    modelChosen = Signal(str)  # a model path picked from a dialog, menu or drop: for the recent list
    calibrationChosen = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from quailora_core.config import RunConfig

        self._base = RunConfig()  # settings the form does not show come from here
        self._updating = False
        self.error_labels: dict[str, QLabel] = {}
        self._recent_models: list[str] = []
        self._recent_calibration: list[str] = []
        self._source_tokens: int | None = None

        scroll = self.scroll = QScrollArea(self)
        scroll.setObjectName("formScroll")
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        contents = QWidget()
        contents.setObjectName("formContents")
        self.sections_layout = QVBoxLayout(contents)
        self.sections_layout.setContentsMargins(8, 4, 8, 8)
        self.sections_layout.setSpacing(2)
        scroll.setWidget(contents)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

        build_all(self)
        self.sections_layout.addStretch(1)
        self.targets_editor = TargetsEditor(self.targetsList, self.allLinearCheck, self._on_edit)
        for f in ff.FIELDS:
            self._watch(self.widget(f))
        self.methodAdvancedButton.toggled.connect(self.show_advanced)
        self.show_advanced(False)
        # never clipped: the dock holding the form cannot be made narrower than its widest row
        self.setMinimumWidth(contents.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width() + 2)
        self.bitsCombo.currentIndexChanged.connect(self._sync_enabled)
        self.methodCombo.currentIndexChanged.connect(self._sync_enabled)
        self.set_config(self._base)

    def widget(self, f: ff.FormField) -> Any:
        return getattr(self, f.name)

    def _watch(self, w: QWidget) -> None:
        if isinstance(w, QLineEdit):
            w.textChanged.connect(self._on_edit)
        elif isinstance(w, (QSpinBox, QDoubleSpinBox)):
            w.valueChanged.connect(self._on_edit)
        elif isinstance(w, QComboBox):
            w.currentIndexChanged.connect(self._on_edit)
            if w.isEditable():
                w.editTextChanged.connect(self._on_edit)
        elif isinstance(w, QCheckBox):
            w.toggled.connect(self._on_edit)

    # ================================================================== config <-> widgets
    def set_config(self, config: Any) -> None:
        """Show a RunConfig in the widgets (no `changed` per widget; one at the end)."""
        self._base = copy.deepcopy(config)
        self._updating = True
        try:
            for f in ff.FIELDS:
                self._write(f, ff.get_value(config, f.path))
        finally:
            self._updating = False
        if self._advanced_differs(config):  # a run file's own settings are never hidden
            self.show_advanced(True)
        self._on_edit()

    ADVANCED = ("inputsCombo", "dampingSpin", "alsItersSpin", "deviceCombo", "batchSizeSpin", "verifyCombo")

    def _advanced_differs(self, config: Any) -> bool:
        from quailora_core.config import RunConfig

        default = RunConfig()
        return any(ff.get_value(config, f.path) != ff.get_value(default, f.path)
                   for f in ff.FIELDS if f.name in self.ADVANCED)  # fmt: skip

    def show_advanced(self, on: bool) -> None:
        """Unfold (or fold) the method's less used settings under its "More" button."""
        for layout, index in self.advanced_rows:
            layout.setRowVisible(index, on)
        button = self.methodAdvancedButton
        if button.isChecked() != on:
            button.setChecked(on)
        button.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)

    def to_config(self) -> Any:
        """The RunConfig the widgets describe (settings not shown come from the last config set)."""
        config = copy.deepcopy(self._base)
        for f in ff.FIELDS:
            ff.set_value(config, f.path, self._read(f))
        return config

    def _read(self, f: ff.FormField) -> Any:
        w = self.widget(f)
        kind = f.kind
        if kind == ff.TARGET_LIST:
            return self.targets()
        if kind in (ff.TEXT, ff.COMBO_TEXT):
            text = (w.text() if kind == ff.TEXT else w.currentText()).strip()
            return ff.default_value(f.path) if f.blank_is_default and not text else text
        if kind == ff.INT:
            return w.value()
        if kind == ff.FLOAT:
            return float(w.value())
        if kind == ff.CHECK:
            return w.isChecked()
        return w.currentData()  # CHOICE, OPEN_CHOICE

    def _write(self, f: ff.FormField, value: Any) -> None:
        w = self.widget(f)
        kind = f.kind
        if kind == ff.TARGET_LIST:
            self.targets_editor.set_specs(list(value))
        elif kind == ff.TEXT:
            w.setText("" if value is None else str(value))
        elif kind == ff.COMBO_TEXT:
            w.setEditText(str(value))
        elif kind == ff.INT:
            w.setValue(int(value))
        elif kind == ff.FLOAT:
            w.setValue(float(value))
        elif kind == ff.CHECK:
            w.setChecked(bool(value))
        else:
            self._set_combo(w, value, add=kind == ff.OPEN_CHOICE)

    @staticmethod
    def _set_combo(combo: QComboBox, value: Any, add: bool = False) -> None:
        index = combo.findData(value)
        if index < 0 and add:
            combo.addItem(str(value), value)
            index = combo.count() - 1
        if index >= 0:
            combo.setCurrentIndex(index)

    def targets(self) -> list[str]:
        """The LoRA targets the form sends (`form_targets.TargetsEditor`)."""
        return self.targets_editor.targets()

    def set_modules(self, modules: list[str]) -> None:
        self.targets_editor.set_modules(modules)

    # ================================================================== reactions
    def _on_edit(self, *_: Any) -> None:
        if self._updating:
            return
        self._sync_enabled()
        self._update_badges()
        self._update_token_count()
        self.changed.emit()

    def _sync_enabled(self, *_: Any) -> None:
        four_bit = self.bitsCombo.currentData() == 4
        for w in (self.quantTypeCombo, self.doubleQuantCheck, self.computeDtypeLabel, self.computeDtypeCombo):
            w.setEnabled(four_bit)
        calibrated = self.methodCombo.currentData() in CALIBRATED_METHODS
        self.inputsCombo.setEnabled(calibrated)
        self.dampingSpin.setEnabled(calibrated)
        self.alsItersSpin.setEnabled(self.methodCombo.currentData() in ITERATIVE_METHODS)

    def _update_badges(self) -> None:
        from quailora_core.config import DEMO_CALIBRATION, DEMO_MODEL

        self.demoModelBadge.setVisible(self.modelPathEdit.text().strip() == DEMO_MODEL)
        self.demoCalibrationBadge.setVisible(self.calibrationPathEdit.text().strip() == DEMO_CALIBRATION)

    def _update_token_count(self, estimate: Any | None = None) -> None:
        self.tokenCountLabel.setText(form_text.token_count_html(
            self.samplesSpin.value(), self.seqLenSpin.value(), self.heldoutSpin.value(),
            getattr(estimate, "tokens", None), self._source_tokens, getattr(estimate, "warnings", ()),
        ))  # fmt: skip

    def show_field(self, key: str) -> None:
        """Scroll the problem `key` (an error key of controllers.form_fields) into view and put
        the cursor in its first field: the status line beside Run links here."""
        label = self.error_labels.get(key)
        if label is None:
            return
        if key in (ff.METHOD, ff.DEVICE):
            self.show_advanced(True)
        widgets = [self.widget(f) for f in ff.FIELDS if f.error == key]
        target = next((w for w in widgets if w.isEnabled()), None)
        self.scroll.ensureWidgetVisible(target or label, 20, 40)
        self.scroll.ensureWidgetVisible(label, 20, 20)
        if target is not None:
            target.setFocus(Qt.FocusReason.OtherFocusReason)

    # ================================================================== check report
    def apply_report(self, report: checks.CheckReport) -> None:
        """Show errors next to their fields, the model summary, the preview and the estimate."""
        for key, label in self.error_labels.items():
            set_error(label, report.errors.get(key, ""))
        for key, name in PATH_EDITS:
            edit = getattr(self, name)
            invalid = "true" if key in report.errors else "false"
            if edit.property("invalid") != invalid:
                edit.setProperty("invalid", invalid)
                restyle(edit)
        if report.summary is not None:
            self.set_modules(list(report.summary.linear_modules))
        self.modelSummaryLabel.setText(form_text.summary_html(report.summary))
        self.calibrationPreview.setPlainText(form_text.preview_text(report.preview))
        self.calibrationStatsLabel.setText(form_text.preview_stats(report.preview))
        self._source_tokens = form_text.source_tokens(report.preview)
        self._show_columns(report.columns)
        self.estimateLabel.setText(form_text.estimate_html(report.estimate, report.estimate_error))
        self._update_token_count(report.estimate)
        self.servingWarningLabel.setText(form_text.serving_warnings_html(report.serving))
        self.servingWarningLabel.setVisible(bool(report.serving))

    def _show_columns(self, columns: list[str]) -> None:
        """Offer the source's columns; the chooser is enabled for tables with several."""
        combo = self.textColumnCombo
        current = combo.currentText()
        if [combo.itemText(i) for i in range(combo.count())] != columns:
            was, self._updating = self._updating, True
            combo.clear()
            combo.addItems(columns)
            combo.setEditText(current)
            self._updating = was
        combo.setEnabled(len(columns) > 1 or not self.error_labels[checks.TEXT_COLUMN].isHidden())

    # ================================================================== devices, recents, dialogs
    def set_devices(self, devices: list[tuple[str, str]]) -> None:
        current = self.deviceCombo.currentData()
        was, self._updating = self._updating, True
        self.deviceCombo.clear()
        for spec, label in devices:
            self.deviceCombo.addItem(label, spec)
        self._set_combo(self.deviceCombo, current, add=True)
        self._updating = was

    def set_recent(self, models: list[str], calibration: list[str]) -> None:
        self._recent_models = list(models)
        self._recent_calibration = list(calibration)

    def _fill_menu(self, menu: Any, demo_label: str, demo_name: str, demo: str, recent: list[str],
                   none: str, choose: Any) -> None:  # fmt: skip
        menu.clear()
        action = QAction(demo_label, menu)
        action.setObjectName(demo_name)
        action.triggered.connect(lambda: choose(demo))
        menu.addAction(action)
        menu.addSeparator()
        if not recent:
            menu.addAction(none).setEnabled(False)
        for path in recent:
            menu.addAction(path).triggered.connect(lambda _=False, p=path: choose(p))

    def _fill_model_menu(self) -> None:
        from quailora_core.config import DEMO_MODEL

        self._fill_menu(self.modelMenu, DEMO_MODEL_LABEL, "demoModelAction", DEMO_MODEL, self._recent_models,
                        "No recent models", self.choose_model)  # fmt: skip

    def _fill_calibration_menu(self) -> None:
        from quailora_core.config import DEMO_CALIBRATION

        self._fill_menu(self.calibrationMenu, DEMO_CALIBRATION_LABEL, "demoCalibrationAction", DEMO_CALIBRATION,
                        self._recent_calibration, "No recent sources", self.choose_calibration)  # fmt: skip

    def choose_model(self, path: str) -> None:
        self.modelPathEdit.setText(path)
        self.modelChosen.emit(path)

    def choose_calibration(self, source: str) -> None:
        self.calibrationPathEdit.setText(source)
        self.calibrationChosen.emit(source)

    def browse_model(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a model folder", self.modelPathEdit.text())
        if path:
            self.choose_model(path)

    def browse_calibration_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose calibration text", self.calibrationPathEdit.text(),
            "Text and tables (*.txt *.md *.jsonl *.json *.csv *.tsv *.parquet);;All files (*)",
        )  # fmt: skip
        if path:
            self.choose_calibration(path)

    def browse_calibration_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a folder of calibration files")
        if path:
            self.choose_calibration(path)

    def browse_output(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose the adapter folder", self.outputPathEdit.text())
        if path:
            self.outputPathEdit.setText(path)
