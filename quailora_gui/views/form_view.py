"""The run form: model, calibration data, quantization, LoRA, method, output.

It shows a RunConfig and turns edits back into one (`to_config`). Fields the form does
not show (training settings, ...) are carried over from the config last set, so a run
file opened and saved again keeps every field. It computes nothing: the model summary,
the data preview, the estimate and the per-field errors come in a `CheckReport`.
"""

from __future__ import annotations

import copy
from html import escape
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..controllers import checks
from ..controllers.formatting import fmt_count, fmt_duration, fmt_gb, fmt_int
from ..controllers.labels import (
    DEMO_CALIBRATION_LABEL,
    DEMO_MODEL_LABEL,
    INPUT_LABELS,
    METHOD_LABELS,
    QUANT_TYPE_LABELS,
    VERIFY_LABELS,
)
from .common import error_label, named, restyle, role_label, set_error

DTYPES = ("auto", "float32", "bfloat16", "float16")
# Methods whose solver uses the calibration inputs (the others ignore inputs and damping).
CALIBRATED_METHODS = ("quailora", "exact")


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.capitalize() for part in rest)


class RunForm(QWidget):
    """Left panel. Emits `changed` after any edit (the window debounces its checks)."""

    changed = Signal()
    modelChosen = Signal(str)  # a model path picked from a dialog, menu or drop: for the recent list
    calibrationChosen = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from quailora_core.config import RunConfig

        self._base = RunConfig()  # fields the form does not show come from here
        self._pending_targets: list[str] = list(self._base.lora.targets)
        self._modules: list[str] = []
        self._updating = False
        self._errors: dict[str, QLabel] = {}
        self._recent_models: list[str] = []
        self._recent_calibration: list[str] = []
        self._source_tokens: int | None = None

        scroll = QScrollArea(self)
        scroll.setObjectName("formScroll")
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        contents = QWidget()
        contents.setObjectName("formContents")
        self._layout = QVBoxLayout(contents)
        self._layout.setContentsMargins(8, 4, 8, 8)
        self._layout.setSpacing(6)
        scroll.setWidget(contents)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

        self._build_model()
        self._build_calibration()
        self._build_quantization()
        self._build_lora()
        self._build_method()
        self._build_output()
        self._layout.addStretch(1)
        self.set_config(self._base)

    # ================================================================== building
    def _group(self, title: str, name: str) -> QFormLayout:
        box = QGroupBox(title)
        box.setObjectName(name)
        form = QFormLayout(box)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        form.setHorizontalSpacing(8)
        form.setVerticalSpacing(5)
        self._layout.addWidget(box)
        return form

    def _error_row(self, form: QFormLayout, key: str) -> QLabel:
        label = error_label(f"{_camel(key)}Error")
        self._errors[key] = label
        form.addRow(label)
        return label

    def _watch(self, *widgets: QWidget) -> None:
        for w in widgets:
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

    def _build_model(self) -> None:
        form = self._group("Model", "modelGroup")
        self.modelPathEdit = named(QLineEdit(), "modelPathEdit")
        self.modelPathEdit.setPlaceholderText("Model folder, hub id, or demo")
        self.modelMenuButton = named(QToolButton(), "modelMenuButton")
        self.modelMenuButton.setText("▾")
        self.modelMenuButton.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.modelMenu = QMenu(self.modelMenuButton)
        self.modelMenu.aboutToShow.connect(self._fill_model_menu)
        self.modelMenuButton.setMenu(self.modelMenu)
        self.modelBrowseButton = named(QPushButton("Browse…"), "modelBrowseButton")
        self.modelBrowseButton.clicked.connect(self.browse_model)
        row = QHBoxLayout()
        row.setSpacing(4)
        row.addWidget(self.modelPathEdit, 1)
        row.addWidget(self.modelMenuButton)
        row.addWidget(self.modelBrowseButton)
        form.addRow("Model", row)
        self.demoModelBadge = role_label(
            f"{DEMO_MODEL_LABEL}: a 1.8 M-parameter Llama that ships with the app, no download.",
            "badge",
            "demoModelBadge",
        )
        self.demoModelBadge.hide()
        form.addRow(self.demoModelBadge)
        self._error_row(form, checks.MODEL)
        self.modelSummaryLabel = role_label("", "summary", "modelSummaryLabel")
        self.modelSummaryLabel.setTextFormat(Qt.TextFormat.RichText)
        self.modelSummaryLabel.setText(self._muted("The model's summary appears here."))
        form.addRow(self.modelSummaryLabel)

        self.allLinearCheck = named(QCheckBox("All linear modules"), "allLinearCheck")
        self.allLinearCheck.toggled.connect(self._on_all_linear)
        form.addRow("Targets", self.allLinearCheck)
        self.targetsList = named(QListWidget(), "targetsList")
        self.targetsList.setFlow(QListWidget.Flow.LeftToRight)
        self.targetsList.setWrapping(True)
        self.targetsList.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.targetsList.setSpacing(2)
        self.targetsList.setMaximumHeight(50)
        self.targetsList.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum)
        self.targetsList.itemChanged.connect(self._on_target_item)
        form.addRow("", self.targetsList)
        self._error_row(form, checks.TARGETS)

        self.trustRemoteCodeCheck = named(QCheckBox("Trust remote code"), "trustRemoteCodeCheck")
        self.dtypeCombo = named(QComboBox(), "dtypeCombo")
        for d in DTYPES:
            self.dtypeCombo.addItem(d, d)
        row = QHBoxLayout()
        row.addWidget(self.dtypeCombo)
        row.addWidget(self.trustRemoteCodeCheck)
        row.addStretch(1)
        form.addRow("Load dtype", row)
        self._watch(self.modelPathEdit, self.trustRemoteCodeCheck, self.dtypeCombo)

    def _build_calibration(self) -> None:
        form = self._group("Calibration data", "calibrationGroup")
        self.calibrationPathEdit = named(QLineEdit(), "calibrationPathEdit")
        self.calibrationPathEdit.setPlaceholderText("File, folder, hub dataset, or demo")
        self.calibrationMenuButton = named(QToolButton(), "calibrationMenuButton")
        self.calibrationMenuButton.setText("▾")
        self.calibrationMenuButton.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.calibrationMenu = QMenu(self.calibrationMenuButton)
        self.calibrationMenu.aboutToShow.connect(self._fill_calibration_menu)
        self.calibrationMenuButton.setMenu(self.calibrationMenu)
        self.calibrationBrowseButton = named(QPushButton("File…"), "calibrationBrowseButton")
        self.calibrationBrowseButton.clicked.connect(self.browse_calibration_file)
        self.calibrationFolderButton = named(QPushButton("Folder…"), "calibrationFolderButton")
        self.calibrationFolderButton.clicked.connect(self.browse_calibration_folder)
        row = QHBoxLayout()
        row.setSpacing(4)
        row.addWidget(self.calibrationPathEdit, 1)
        row.addWidget(self.calibrationMenuButton)
        row.addWidget(self.calibrationBrowseButton)
        row.addWidget(self.calibrationFolderButton)
        form.addRow("Source", row)
        self.demoCalibrationBadge = role_label(
            f"{DEMO_CALIBRATION_LABEL}: English prose shipped with the package.",
            "badge",
            "demoCalibrationBadge",
        )
        self.demoCalibrationBadge.hide()
        form.addRow(self.demoCalibrationBadge)
        self._error_row(form, checks.CALIBRATION)

        self.textColumnCombo = named(QComboBox(), "textColumnCombo")
        self.textColumnCombo.setEditable(True)
        self.textColumnCombo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.datasetConfigEdit = named(QLineEdit(), "datasetConfigEdit")
        self.datasetConfigEdit.setPlaceholderText("config (hub)")
        self.splitEdit = named(QLineEdit(), "splitEdit")
        self.splitEdit.setPlaceholderText("train")
        row = QHBoxLayout()
        row.addWidget(self.textColumnCombo, 2)
        row.addWidget(self.datasetConfigEdit, 2)
        row.addWidget(self.splitEdit, 1)
        form.addRow("Column", row)
        self._error_row(form, checks.TEXT_COLUMN)

        self.calibrationPreview = named(
            QPlainTextEdit(), "calibrationPreview", "First rows of the calibration data."
        )
        self.calibrationPreview.setReadOnly(True)
        self.calibrationPreview.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.calibrationPreview.setMaximumHeight(74)
        self.calibrationPreview.setPlaceholderText("A preview of the first rows appears here.")
        form.addRow(self.calibrationPreview)
        self.calibrationStatsLabel = role_label("", "hint", "calibrationStatsLabel")
        form.addRow(self.calibrationStatsLabel)

        self.samplesSpin = named(QSpinBox(), "samplesSpin")
        self.samplesSpin.setRange(1, 1_000_000)
        self.seqLenSpin = named(QSpinBox(), "seqLenSpin")
        self.seqLenSpin.setRange(8, 1_048_576)
        self.seqLenSpin.setSingleStep(64)
        row = QHBoxLayout()
        row.addWidget(self.samplesSpin, 1)
        row.addWidget(QLabel("× tokens"))
        row.addWidget(self.seqLenSpin, 1)
        form.addRow("Samples", row)
        self.heldoutSpin = named(QSpinBox(), "heldoutSpin")
        self.heldoutSpin.setRange(0, 1_000_000)
        self.seedSpin = named(QSpinBox(), "seedSpin")
        self.seedSpin.setRange(0, 2**31 - 1)
        row = QHBoxLayout()
        row.addWidget(self.heldoutSpin, 1)
        row.addWidget(QLabel("seed"))
        row.addWidget(self.seedSpin, 1)
        form.addRow("Held out", row)
        self.tokenCountLabel = role_label("", "hint", "tokenCountLabel")
        form.addRow(self.tokenCountLabel)
        self._error_row(form, checks.SIZES)
        self._watch(
            self.calibrationPathEdit,
            self.textColumnCombo,
            self.datasetConfigEdit,
            self.splitEdit,
            self.samplesSpin,
            self.seqLenSpin,
            self.heldoutSpin,
            self.seedSpin,
        )

    def _build_quantization(self) -> None:
        form = self._group("Quantization", "quantizationGroup")
        self.bitsCombo = named(QComboBox(), "bitsCombo")
        self.bitsCombo.addItem("4-bit", 4)
        self.bitsCombo.addItem("8-bit (LLM.int8)", 8)
        self.quantTypeCombo = named(QComboBox(), "quantTypeCombo")
        for key, label in QUANT_TYPE_LABELS.items():
            self.quantTypeCombo.addItem(label, key)
        row = QHBoxLayout()
        row.addWidget(self.bitsCombo, 1)
        row.addWidget(self.quantTypeCombo, 1)
        form.addRow("Bits / type", row)
        self.doubleQuantCheck = named(QCheckBox("Double quantization"), "doubleQuantCheck")
        self.computeDtypeCombo = named(QComboBox(), "computeDtypeCombo")
        for d in DTYPES:
            self.computeDtypeCombo.addItem(d, d)
        row = QHBoxLayout()
        row.addWidget(self.doubleQuantCheck)
        row.addStretch(1)
        row.addWidget(QLabel("compute"))
        row.addWidget(self.computeDtypeCombo)
        form.addRow("", row)
        self._error_row(form, checks.QUANTIZATION)
        self.bitsCombo.currentIndexChanged.connect(self._sync_enabled)
        self._watch(self.bitsCombo, self.quantTypeCombo, self.doubleQuantCheck, self.computeDtypeCombo)

    def _build_lora(self) -> None:
        form = self._group("LoRA", "loraGroup")
        self.rankSpin = named(QSpinBox(), "rankSpin")
        self.rankSpin.setRange(1, 8192)
        self.alphaSpin = named(QDoubleSpinBox(), "alphaSpin")
        self.alphaSpin.setRange(0.01, 1_000_000.0)
        self.alphaSpin.setDecimals(2)
        row = QHBoxLayout()
        row.addWidget(self.rankSpin, 1)
        row.addWidget(QLabel("alpha"))
        row.addWidget(self.alphaSpin, 1)
        form.addRow("Rank", row)
        self.rsloraCheck = named(QCheckBox("rsLoRA scaling (alpha / √r)"), "rsloraCheck")
        form.addRow("", self.rsloraCheck)
        self._error_row(form, checks.LORA)
        self._watch(self.rankSpin, self.alphaSpin, self.rsloraCheck)

    def _build_method(self) -> None:
        form = self._group("Method", "methodGroup")
        self.methodCombo = named(QComboBox(), "methodCombo")
        for key, label in METHOD_LABELS.items():
            self.methodCombo.addItem(label, key)
        form.addRow("Method", self.methodCombo)
        self.inputsCombo = named(QComboBox(), "inputsCombo")
        for key, label in INPUT_LABELS.items():
            self.inputsCombo.addItem(label, key)
        form.addRow("Inputs", self.inputsCombo)
        self.dampingSpin = named(QDoubleSpinBox(), "dampingSpin")
        self.dampingSpin.setRange(0.0, 100.0)
        self.dampingSpin.setDecimals(4)
        self.dampingSpin.setSingleStep(0.005)
        self.alsItersSpin = named(QSpinBox(), "alsItersSpin")
        self.alsItersSpin.setRange(1, 10_000)
        row = QHBoxLayout()
        row.addWidget(self.dampingSpin, 1)
        row.addWidget(QLabel("ALS iters"))
        row.addWidget(self.alsItersSpin, 1)
        form.addRow("Damping", row)
        self.deviceCombo = named(QComboBox(), "deviceCombo")
        self.deviceCombo.addItem("auto", "auto")
        self.deviceCombo.addItem("CPU", "cpu")
        self.batchSizeSpin = named(QSpinBox(), "batchSizeSpin")
        self.batchSizeSpin.setRange(1, 4096)
        row = QHBoxLayout()
        row.addWidget(self.deviceCombo, 2)
        row.addWidget(QLabel("batch"))
        row.addWidget(self.batchSizeSpin, 1)
        form.addRow("Device", row)
        self.verifyCombo = named(QComboBox(), "verifyCombo")
        for key, label in VERIFY_LABELS.items():
            self.verifyCombo.addItem(label, key)
        self.verifyCombo.setToolTip(
            "After writing, load the adapter as training will and recompute the errors it reports; "
            "a mismatch fails the run and leaves no adapter."
        )
        form.addRow("Self-check", self.verifyCombo)
        self._error_row(form, checks.METHOD)
        self._error_row(form, checks.DEVICE)
        self.methodCombo.currentIndexChanged.connect(self._sync_enabled)
        self._watch(
            self.methodCombo,
            self.inputsCombo,
            self.dampingSpin,
            self.alsItersSpin,
            self.deviceCombo,
            self.batchSizeSpin,
            self.verifyCombo,
        )

    def _build_output(self) -> None:
        form = self._group("Output", "outputGroup")
        self.outputPathEdit = named(QLineEdit(), "outputPathEdit")
        self.outputPathEdit.setPlaceholderText("Adapter folder to write")
        self.outputBrowseButton = named(QPushButton("Browse…"), "outputBrowseButton")
        self.outputBrowseButton.clicked.connect(self.browse_output)
        row = QHBoxLayout()
        row.setSpacing(4)
        row.addWidget(self.outputPathEdit, 1)
        row.addWidget(self.outputBrowseButton)
        form.addRow("Folder", row)
        self.overwriteCheck = named(QCheckBox("Overwrite a non-empty folder"), "overwriteCheck")
        form.addRow("", self.overwriteCheck)
        self._error_row(form, checks.OUTPUT)
        self.estimateLabel = role_label("", "summary", "estimateLabel")
        self.estimateLabel.setToolTip("Estimated peak memory and time of the run, before it starts.")
        form.addRow("Estimate", self.estimateLabel)
        self._error_row(form, checks.GENERAL)
        self._watch(self.outputPathEdit, self.overwriteCheck)

    # ================================================================== config <-> widgets
    def set_config(self, config: Any) -> None:
        """Show a RunConfig in the widgets (no `changed` per widget; one at the end)."""
        self._base = copy.deepcopy(config)
        self._updating = True
        try:
            m, cal, q, lo, ini = (
                config.model,
                config.calibration,
                config.quantization,
                config.lora,
                config.init,
            )
            self.modelPathEdit.setText(m.path)
            self.trustRemoteCodeCheck.setChecked(bool(m.trust_remote_code))
            self._set_combo(self.dtypeCombo, m.dtype)
            self.calibrationPathEdit.setText(cal.source)
            self.textColumnCombo.setEditText(cal.text_column)
            self.datasetConfigEdit.setText(cal.dataset_config or "")
            self.splitEdit.setText(cal.split)
            self.samplesSpin.setValue(cal.samples)
            self.seqLenSpin.setValue(cal.seq_len)
            self.heldoutSpin.setValue(cal.heldout_samples)
            self.seedSpin.setValue(cal.seed)
            self._set_combo(self.bitsCombo, q.bits)
            self._set_combo(self.quantTypeCombo, q.quant_type)
            self.doubleQuantCheck.setChecked(bool(q.double_quant))
            self._set_combo(self.computeDtypeCombo, q.compute_dtype)
            self.rankSpin.setValue(lo.rank)
            self.alphaSpin.setValue(float(lo.alpha))
            self.rsloraCheck.setChecked(bool(lo.rslora))
            self._set_combo(self.methodCombo, ini.method)
            self._set_combo(self.inputsCombo, ini.inputs)
            self.dampingSpin.setValue(float(ini.damping))
            self.alsItersSpin.setValue(ini.als_iters)
            self._set_combo(self.deviceCombo, ini.device, add=True)
            self.batchSizeSpin.setValue(ini.batch_size)
            self._set_combo(self.verifyCombo, ini.verify)
            self.outputPathEdit.setText(config.output)
            self.overwriteCheck.setChecked(bool(config.overwrite))
            self._pending_targets = list(lo.targets)
            self._apply_targets(self._pending_targets)
        finally:
            self._updating = False
        self._sync_enabled()
        self._update_badges()
        self._update_token_count()
        self.changed.emit()

    def to_config(self) -> Any:
        """The RunConfig the widgets describe (fields not shown come from the last config set)."""
        config = copy.deepcopy(self._base)
        m, cal, q, lo, ini = config.model, config.calibration, config.quantization, config.lora, config.init
        m.path = self.modelPathEdit.text().strip()
        m.trust_remote_code = self.trustRemoteCodeCheck.isChecked()
        m.dtype = self.dtypeCombo.currentData()
        cal.source = self.calibrationPathEdit.text().strip()
        cal.text_column = self.textColumnCombo.currentText().strip() or "text"
        cal.dataset_config = self.datasetConfigEdit.text().strip() or None
        cal.split = self.splitEdit.text().strip() or "train"
        cal.samples = self.samplesSpin.value()
        cal.seq_len = self.seqLenSpin.value()
        cal.heldout_samples = self.heldoutSpin.value()
        cal.seed = self.seedSpin.value()
        q.bits = int(self.bitsCombo.currentData())
        q.quant_type = self.quantTypeCombo.currentData()
        q.double_quant = self.doubleQuantCheck.isChecked()
        q.compute_dtype = self.computeDtypeCombo.currentData()
        lo.rank = self.rankSpin.value()
        lo.alpha = float(self.alphaSpin.value())
        lo.rslora = self.rsloraCheck.isChecked()
        lo.targets = self.targets()
        ini.method = self.methodCombo.currentData()
        ini.inputs = self.inputsCombo.currentData()
        ini.damping = float(self.dampingSpin.value())
        ini.als_iters = self.alsItersSpin.value()
        ini.device = self.deviceCombo.currentData()
        ini.batch_size = self.batchSizeSpin.value()
        ini.verify = self.verifyCombo.currentData()
        config.output = self.outputPathEdit.text().strip()
        config.overwrite = self.overwriteCheck.isChecked()
        return config

    @staticmethod
    def _set_combo(combo: QComboBox, value: Any, add: bool = False) -> None:
        index = combo.findData(value)
        if index < 0 and add:
            combo.addItem(str(value), value)
            index = combo.count() - 1
        if index >= 0:
            combo.setCurrentIndex(index)

    # ================================================================== targets
    def targets(self) -> list[str]:
        """['all-linear'] when every module is checked, else the checked names."""
        if not self._modules:
            return list(self._pending_targets)
        checked = [
            self.targetsList.item(i).text()
            for i in range(self.targetsList.count())
            if self.targetsList.item(i).checkState() == Qt.CheckState.Checked
        ]
        if self.allLinearCheck.isChecked() or (checked and len(checked) == len(self._modules)):
            return ["all-linear"]
        return checked

    def set_modules(self, modules: list[str]) -> None:
        """Fill the target checkboxes from the model's linear modules, keeping the choice."""
        if list(modules) == self._modules:
            return
        wanted = self.targets() if self._modules else self._pending_targets
        self._modules = list(modules)
        self._apply_targets(wanted)

    def _apply_targets(self, wanted: list[str]) -> None:
        was = self._updating
        self._updating = True
        try:
            all_linear = wanted == ["all-linear"]
            self.targetsList.clear()
            for name in self._modules:
                item = QListWidgetItem(name)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                on = all_linear or name in wanted
                item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
                self.targetsList.addItem(item)
            self.allLinearCheck.setChecked(all_linear)
            self.targetsList.setVisible(bool(self._modules))
            if not self._modules:
                self._pending_targets = list(wanted)
        finally:
            self._updating = was

    def _on_all_linear(self, on: bool) -> None:
        if self._updating:
            return
        self._updating = True
        try:
            if on or all(
                self.targetsList.item(i).checkState() == Qt.CheckState.Checked
                for i in range(self.targetsList.count())
            ):
                state = Qt.CheckState.Checked if on else Qt.CheckState.Unchecked
                for i in range(self.targetsList.count()):
                    self.targetsList.item(i).setCheckState(state)
            if not self._modules:
                self._pending_targets = ["all-linear"] if on else []
        finally:
            self._updating = False
        self._on_edit()

    def _on_target_item(self, _item: QListWidgetItem) -> None:
        if self._updating:
            return
        all_on = all(
            self.targetsList.item(i).checkState() == Qt.CheckState.Checked
            for i in range(self.targetsList.count())
        )
        self._updating = True
        self.allLinearCheck.setChecked(all_on)
        self._updating = False
        self._on_edit()

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
        self.quantTypeCombo.setEnabled(four_bit)
        self.doubleQuantCheck.setEnabled(four_bit)
        self.computeDtypeCombo.setEnabled(four_bit)
        calibrated = self.methodCombo.currentData() in CALIBRATED_METHODS
        self.inputsCombo.setEnabled(calibrated)
        self.dampingSpin.setEnabled(calibrated)
        self.alsItersSpin.setEnabled(self.methodCombo.currentData() == "quailora")

    def _update_badges(self) -> None:
        from quailora_core.config import DEMO_CALIBRATION, DEMO_MODEL

        self.demoModelBadge.setVisible(self.modelPathEdit.text().strip() == DEMO_MODEL)
        self.demoCalibrationBadge.setVisible(self.calibrationPathEdit.text().strip() == DEMO_CALIBRATION)

    def _update_token_count(self, estimate: Any | None = None) -> None:
        n, length, held = self.samplesSpin.value(), self.seqLenSpin.value(), self.heldoutSpin.value()
        tokens = getattr(estimate, "tokens", None) or n * length
        text = f"Uses {fmt_int(n)} × {fmt_int(length)} = <b>{fmt_int(tokens)}</b> calibration tokens"
        if held:
            text += f", plus {fmt_int(held)} × {fmt_int(length)} = {fmt_int(held * length)} held out"
        text += "."
        available = getattr(self, "_source_tokens", None)
        if available is not None and available < (n + held) * length:
            text += (
                f"<br><span style='color:#92400e'>The source has only about {fmt_count(available)} tokens: "
                "the engine will use what there is and say so in the log.</span>"
            )
        self.tokenCountLabel.setText(text)

    # ================================================================== check report
    def apply_report(self, report: checks.CheckReport) -> None:
        """Show errors next to their fields, the model summary, the preview and the estimate."""
        for key, label in self._errors.items():
            set_error(label, report.errors.get(key, ""))
        for edit, key in (
            (self.modelPathEdit, checks.MODEL),
            (self.calibrationPathEdit, checks.CALIBRATION),
            (self.outputPathEdit, checks.OUTPUT),
        ):
            invalid = "true" if key in report.errors else "false"
            if edit.property("invalid") != invalid:
                edit.setProperty("invalid", invalid)
                restyle(edit)
        self._show_summary(report.summary)
        self._show_preview(report.preview)
        self._show_columns(report.columns)
        self._show_estimate(report)
        self._update_token_count(report.estimate)

    def _muted(self, text: str) -> str:
        return f"<span style='color:#64748b'>{escape(text)}</span>"

    def _show_summary(self, s: Any | None) -> None:
        if s is None:
            self.modelSummaryLabel.setText(
                self._muted("The model's summary appears here once it can be read.")
            )
            return
        self.set_modules(list(s.linear_modules))
        arch = (
            f"{escape(str(s.architecture))} <span style='color:#64748b'>({escape(str(s.model_type))})</span>"
        )
        grey = "style='color:#64748b; padding-right:6px'"
        rows = (
            f"<tr><td {grey}>Architecture</td><td colspan='3'>{arch}</td></tr>"
            f"<tr><td {grey}>Parameters</td><td style='padding-right:14px'>{fmt_count(s.n_params)}</td>"
            f"<td {grey}>Blocks</td><td>{fmt_int(s.n_blocks)}</td></tr>"
            f"<tr><td {grey}>Hidden / MLP</td><td style='padding-right:14px'>{fmt_int(s.hidden_size)} / "
            f"{fmt_int(s.intermediate_size)}</td><td {grey}>Vocabulary</td><td>{fmt_int(s.vocab_size)}</td></tr>"
        )
        self.modelSummaryLabel.setText(f"<table cellspacing='0' cellpadding='1'>{rows}</table>")

    def _show_preview(self, p: Any | None) -> None:
        if p is None:
            self.calibrationPreview.setPlainText("")
            self.calibrationStatsLabel.setText("")
            self._source_tokens = None
            return
        parts = []
        for i, row in enumerate(p.rows, start=1):
            text = " ".join(str(row).split())
            parts.append(f"{i:>2}│ {text[:240]}{'…' if len(text) > 240 else ''}")
        self.calibrationPreview.setPlainText("\n".join(parts))
        columns = list(p.columns or [])
        stats = []
        unit = "rows" if p.kind in ("json", "csv", "parquet", "hub") else "paragraphs"
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
        self._source_tokens = p.estimated_tokens if getattr(p, "exact", True) else None
        self.calibrationStatsLabel.setText(" · ".join(stats))

    def _show_columns(self, columns: list[str]) -> None:
        """Offer the source's columns; the chooser is enabled for tables with several."""
        current = self.textColumnCombo.currentText()
        if [self.textColumnCombo.itemText(i) for i in range(self.textColumnCombo.count())] != columns:
            was = self._updating
            self._updating = True
            self.textColumnCombo.clear()
            self.textColumnCombo.addItems(columns)
            self.textColumnCombo.setEditText(current)
            self._updating = was
        self.textColumnCombo.setEnabled(len(columns) > 1 or not self._errors[checks.TEXT_COLUMN].isHidden())

    def _show_estimate(self, report: checks.CheckReport) -> None:
        e = report.estimate
        if e is None:
            text = report.estimate_error or "Appears once the model can be read."
            self.estimateLabel.setText(self._muted(text))
            return
        html = f"≈ <b>{fmt_gb(e.peak_memory_gb)}</b> peak memory · ≈ <b>{fmt_duration(e.seconds)}</b>"
        if getattr(e, "note", ""):
            html += f"<br>{self._muted(e.note)}"
        self.estimateLabel.setText(html)

    # ================================================================== devices, recents, dialogs
    def set_devices(self, devices: list[tuple[str, str]]) -> None:
        current = self.deviceCombo.currentData()
        was = self._updating
        self._updating = True
        self.deviceCombo.clear()
        for spec, label in devices:
            self.deviceCombo.addItem(label, spec)
        self._set_combo(self.deviceCombo, current, add=True)
        self._updating = was

    def set_recent(self, models: list[str], calibration: list[str]) -> None:
        self._recent_models = list(models)
        self._recent_calibration = list(calibration)

    def _fill_model_menu(self) -> None:
        from quailora_core.config import DEMO_MODEL

        self.modelMenu.clear()
        demo = QAction(DEMO_MODEL_LABEL, self.modelMenu)
        demo.setObjectName("demoModelAction")
        demo.triggered.connect(lambda: self.choose_model(DEMO_MODEL))
        self.modelMenu.addAction(demo)
        self.modelMenu.addSeparator()
        if not self._recent_models:
            none = self.modelMenu.addAction("No recent models")
            none.setEnabled(False)
        for path in self._recent_models:
            action = self.modelMenu.addAction(path)
            action.triggered.connect(lambda _=False, p=path: self.choose_model(p))

    def _fill_calibration_menu(self) -> None:
        from quailora_core.config import DEMO_CALIBRATION

        self.calibrationMenu.clear()
        demo = QAction(DEMO_CALIBRATION_LABEL, self.calibrationMenu)
        demo.setObjectName("demoCalibrationAction")
        demo.triggered.connect(lambda: self.choose_calibration(DEMO_CALIBRATION))
        self.calibrationMenu.addAction(demo)
        self.calibrationMenu.addSeparator()
        if not self._recent_calibration:
            none = self.calibrationMenu.addAction("No recent sources")
            none.setEnabled(False)
        for path in self._recent_calibration:
            action = self.calibrationMenu.addAction(path)
            action.triggered.connect(lambda _=False, p=path: self.choose_calibration(p))

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
            self,
            "Choose calibration text",
            self.calibrationPathEdit.text(),
            "Text and tables (*.txt *.md *.jsonl *.json *.csv *.tsv *.parquet);;All files (*)",
        )
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
