"""The run form's sections (group boxes): model, calibration data, quantization, LoRA,
method, output. Each builder adds its widgets to the form under their stable names; the
values, tooltips and errors of the widgets that show a setting go through the field table
(`controllers.form_fields`), not through these builders."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QMenu,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QToolButton,
)

from ..controllers import form_fields as ff
from ..controllers.form_text import muted
from ..controllers.labels import (
    DEMO_CALIBRATION_LABEL,
    DEMO_MODEL_LABEL,
    INPUT_LABELS,
    METHOD_LABELS,
    QUANT_TYPE_LABELS,
    VERIFY_LABELS,
)
from .common import error_label, named, role_label


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.capitalize() for part in rest)


def group(form: Any, title: str, name: str) -> QFormLayout:
    box = QGroupBox(title)
    box.setObjectName(name)
    layout = QFormLayout(box)
    layout.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    layout.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    layout.setHorizontalSpacing(8)
    layout.setVerticalSpacing(4)
    layout.setContentsMargins(4, 2, 4, 2)  # the group box's own padding (style.qss) frames it
    form.sections_layout.addWidget(box)
    return layout


def error_row(form: Any, layout: QFormLayout, key: str) -> None:
    """The red label of the error key `key` (modelError, loraError, ...)."""
    label = error_label(f"{_camel(key)}Error")
    form.error_labels[key] = label
    layout.addRow(label)


def row(*items: Any, spacing: int | None = None) -> QHBoxLayout:
    """Widgets side by side: a (widget, stretch) pair, a widget, a text label, or None for a stretch."""
    box = QHBoxLayout()
    if spacing is not None:
        box.setSpacing(spacing)
    for item in items:
        if item is None:
            box.addStretch(1)
        elif isinstance(item, str):
            box.addWidget(QLabel(item))
        elif isinstance(item, tuple):
            box.addWidget(*item)
        else:
            box.addWidget(item)
    return box


def choices(name: str, keys: Any, labels: dict[str, str] | None = None) -> QComboBox:
    """A combo box of the core's choices `keys`, shown by their labels."""
    combo = named(QComboBox(), name)
    for key in keys:
        combo.addItem((labels or {}).get(key, str(key)), key)
    return combo


def spin(name: str, low: float, high: float, decimals: int | None = None, step: float | None = None) -> Any:
    box = named(QSpinBox() if decimals is None else QDoubleSpinBox(), name)
    if decimals is not None:
        box.setDecimals(decimals)
    box.setRange(low, high)
    if step is not None:
        box.setSingleStep(step)
    return box


def menu_button(form: Any, name: str, fill: Any) -> tuple[QToolButton, QMenu]:
    button = named(QToolButton(), name)
    button.setText("▾")
    button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
    menu = QMenu(button)
    menu.aboutToShow.connect(fill)
    button.setMenu(menu)
    return button, menu


def build_model(form: Any) -> None:
    from quailora_core.config import DTYPES

    layout = group(form, "Model", "modelGroup")
    form.modelPathEdit = named(QLineEdit(), "modelPathEdit")
    form.modelPathEdit.setPlaceholderText("Model folder, hub id, or demo")
    form.modelMenuButton, form.modelMenu = menu_button(form, "modelMenuButton", form._fill_model_menu)
    form.modelBrowseButton = named(QPushButton("Browse…"), "modelBrowseButton")
    form.modelBrowseButton.clicked.connect(form.browse_model)
    layout.addRow("Model", row((form.modelPathEdit, 1), form.modelMenuButton, form.modelBrowseButton, spacing=4))
    form.demoModelBadge = role_label(
        f"{DEMO_MODEL_LABEL}: a 1.8 M-parameter Llama that ships with the app, no download.", "badge", "demoModelBadge"
    )
    form.demoModelBadge.hide()
    layout.addRow(form.demoModelBadge)
    error_row(form, layout, ff.MODEL)
    form.modelSummaryLabel = role_label("", "summary", "modelSummaryLabel")
    form.modelSummaryLabel.setTextFormat(Qt.TextFormat.RichText)
    form.modelSummaryLabel.setText(muted("The model's summary appears here."))
    layout.addRow(form.modelSummaryLabel)

    form.allLinearCheck = named(QCheckBox("All linear modules"), "allLinearCheck")
    layout.addRow("Targets", form.allLinearCheck)
    form.targetsList = named(QListWidget(), "targetsList")
    form.targetsList.setFlow(QListWidget.Flow.LeftToRight)
    form.targetsList.setWrapping(True)
    form.targetsList.setResizeMode(QListWidget.ResizeMode.Adjust)
    form.targetsList.setSpacing(2)
    form.targetsList.setMaximumHeight(50)
    form.targetsList.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum)
    layout.addRow("", form.targetsList)
    error_row(form, layout, ff.TARGETS)

    form.trustRemoteCodeCheck = named(QCheckBox("Trust remote code"), "trustRemoteCodeCheck")
    form.dtypeCombo = choices("dtypeCombo", DTYPES)
    layout.addRow("Load dtype", row(form.dtypeCombo, form.trustRemoteCodeCheck, None))


def build_calibration(form: Any) -> None:
    layout = group(form, "Calibration data", "calibrationGroup")
    form.calibrationPathEdit = named(QLineEdit(), "calibrationPathEdit")
    form.calibrationPathEdit.setPlaceholderText("File, folder, hub dataset, or demo")
    form.calibrationMenuButton, form.calibrationMenu = menu_button(
        form, "calibrationMenuButton", form._fill_calibration_menu
    )
    form.calibrationBrowseButton = named(QPushButton("File…"), "calibrationBrowseButton")
    form.calibrationBrowseButton.clicked.connect(form.browse_calibration_file)
    form.calibrationFolderButton = named(QPushButton("Folder…"), "calibrationFolderButton")
    form.calibrationFolderButton.clicked.connect(form.browse_calibration_folder)
    layout.addRow("Source", row((form.calibrationPathEdit, 1), form.calibrationMenuButton,
                                form.calibrationBrowseButton, form.calibrationFolderButton, spacing=4))  # fmt: skip
    form.demoCalibrationBadge = role_label(
        f"{DEMO_CALIBRATION_LABEL}: English prose shipped with the package.", "badge", "demoCalibrationBadge"
    )
    form.demoCalibrationBadge.hide()
    layout.addRow(form.demoCalibrationBadge)
    error_row(form, layout, ff.CALIBRATION)

    form.textColumnCombo = named(QComboBox(), "textColumnCombo")
    form.textColumnCombo.setEditable(True)
    form.textColumnCombo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
    form.datasetConfigEdit = named(QLineEdit(), "datasetConfigEdit")
    form.datasetConfigEdit.setPlaceholderText("config (hub)")
    form.splitEdit = named(QLineEdit(), "splitEdit")
    form.splitEdit.setPlaceholderText("train")
    layout.addRow("Column", row((form.textColumnCombo, 2), (form.datasetConfigEdit, 2), (form.splitEdit, 1)))
    error_row(form, layout, ff.TEXT_COLUMN)

    form.calibrationPreview = named(QPlainTextEdit(), "calibrationPreview", "First rows of the calibration data.")
    form.calibrationPreview.setReadOnly(True)
    form.calibrationPreview.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
    form.calibrationPreview.setMaximumHeight(58)
    form.calibrationPreview.setPlaceholderText("A preview of the first rows appears here.")
    layout.addRow(form.calibrationPreview)
    form.calibrationStatsLabel = role_label("", "hint", "calibrationStatsLabel")
    layout.addRow(form.calibrationStatsLabel)

    form.samplesSpin = spin("samplesSpin", 1, 1_000_000)
    form.seqLenSpin = spin("seqLenSpin", 8, 1_048_576, step=64)
    layout.addRow("Samples", row((form.samplesSpin, 1), "× tokens", (form.seqLenSpin, 1)))
    form.heldoutSpin = spin("heldoutSpin", 0, 1_000_000)
    form.seedSpin = spin("seedSpin", 0, 2**31 - 1)
    layout.addRow("Held out", row((form.heldoutSpin, 1), "seed", (form.seedSpin, 1)))
    form.tokenCountLabel = role_label("", "hint", "tokenCountLabel")
    layout.addRow(form.tokenCountLabel)
    error_row(form, layout, ff.SIZES)


def build_quantization(form: Any) -> None:
    from quailora_core.config import DTYPES, QUANT_TYPES

    layout = group(form, "Quantization", "quantizationGroup")
    form.bitsCombo = named(QComboBox(), "bitsCombo")
    form.bitsCombo.addItem("4-bit", 4)
    form.bitsCombo.addItem("8-bit (LLM.int8)", 8)
    form.quantTypeCombo = choices("quantTypeCombo", QUANT_TYPES, QUANT_TYPE_LABELS)
    layout.addRow("Bits / type", row((form.bitsCombo, 1), (form.quantTypeCombo, 1)))
    form.doubleQuantCheck = named(QCheckBox("Double quantization"), "doubleQuantCheck")
    form.computeDtypeCombo = choices("computeDtypeCombo", DTYPES)
    form.computeDtypeLabel = named(QLabel("compute"), "computeDtypeLabel")
    layout.addRow("", row(form.doubleQuantCheck, None, form.computeDtypeLabel, form.computeDtypeCombo))
    error_row(form, layout, ff.QUANTIZATION)


def build_lora(form: Any) -> None:
    layout = group(form, "LoRA", "loraGroup")
    form.rankSpin = spin("rankSpin", 1, 8192)
    form.alphaSpin = spin("alphaSpin", 0.01, 1_000_000.0, decimals=2)
    form.rsloraCheck = named(QCheckBox("rsLoRA"), "rsloraCheck")  # its tooltip: scale by alpha / √r
    layout.addRow("Rank", row((form.rankSpin, 1), "alpha", (form.alphaSpin, 1), form.rsloraCheck))
    error_row(form, layout, ff.LORA)
    # which serving stacks could not serve these quantization + LoRA settings (a warning, not an error)
    form.servingWarningLabel = role_label("", "hint", "servingWarningLabel")
    form.servingWarningLabel.setTextFormat(Qt.TextFormat.RichText)
    form.servingWarningLabel.setToolTip("Serving stacks that will not reproduce an adapter computed with these settings.")
    form.servingWarningLabel.hide()
    layout.addRow(form.servingWarningLabel)


def build_method(form: Any) -> None:
    from quailora_core.config import INPUT_SOURCES, METHODS, VERIFY_MODES

    layout = group(form, "Method", "methodGroup")
    form.methodCombo = choices("methodCombo", METHODS, METHOD_LABELS)
    # the settings most runs keep at their defaults fold away under "More", so that the whole
    # form fits a 1000-pixel-high screen; the form unfolds them when one of them is not the
    # default or has a problem (RunForm.show_advanced)
    form.methodAdvancedButton = named(QToolButton(), "methodAdvancedButton")
    form.methodAdvancedButton.setText("More")
    form.methodAdvancedButton.setCheckable(True)
    form.methodAdvancedButton.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
    form.methodAdvancedButton.setArrowType(Qt.ArrowType.RightArrow)
    form.methodAdvancedButton.setToolTip("Inputs, damping, ALS iterations, device, batch size and self-check")
    layout.addRow("Method", row((form.methodCombo, 1), form.methodAdvancedButton, spacing=4))
    form.inputsCombo = choices("inputsCombo", INPUT_SOURCES, INPUT_LABELS)
    form.dampingSpin = spin("dampingSpin", 0.0, 100.0, decimals=4, step=0.005)
    form.alsItersSpin = spin("alsItersSpin", 1, 10_000)
    form.deviceCombo = choices("deviceCombo", ("auto", "cpu"), {"cpu": "CPU"})
    form.batchSizeSpin = spin("batchSizeSpin", 1, 4096)
    form.verifyCombo = choices("verifyCombo", VERIFY_MODES, VERIFY_LABELS)
    form.advanced_rows = []
    for label, field in (
        ("Inputs", form.inputsCombo),
        ("Damping", row((form.dampingSpin, 1), "ALS iters", (form.alsItersSpin, 1))),
        ("Device", row((form.deviceCombo, 2), "batch", (form.batchSizeSpin, 1))),
        ("Self-check", form.verifyCombo),
    ):
        layout.addRow(label, field)
        form.advanced_rows.append((layout, layout.rowCount() - 1))
    error_row(form, layout, ff.METHOD)
    error_row(form, layout, ff.DEVICE)


def build_output(form: Any) -> None:
    layout = group(form, "Output", "outputGroup")
    form.outputPathEdit = named(QLineEdit(), "outputPathEdit")
    form.outputPathEdit.setPlaceholderText("Adapter folder to write")
    form.outputBrowseButton = named(QPushButton("Browse…"), "outputBrowseButton")
    form.outputBrowseButton.clicked.connect(form.browse_output)
    layout.addRow("Folder", row((form.outputPathEdit, 1), form.outputBrowseButton, spacing=4))
    form.overwriteCheck = named(QCheckBox("Overwrite a non-empty folder"), "overwriteCheck")
    layout.addRow("", form.overwriteCheck)
    error_row(form, layout, ff.OUTPUT)
    form.estimateLabel = role_label("", "summary", "estimateLabel")
    form.estimateLabel.setToolTip("Estimated peak memory and time of the run, before it starts.")
    layout.addRow("Estimate", form.estimateLabel)
    error_row(form, layout, ff.GENERAL)


SECTIONS = (build_model, build_calibration, build_quantization, build_lora, build_method, build_output)


def build_all(form: Any) -> None:
    for build in SECTIONS:
        build(form)
