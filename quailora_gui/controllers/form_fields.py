"""One table of the form's fields: widget name, run-file path, kind, and where its errors show.

The run form reads a RunConfig into its widgets and back through `FIELDS` (one direction
each, from the same rows), the tooltips of these widgets are the core's help of their
setting (`quailora_core.config.field_help(path).tooltip()`), and an error the core raises
about a setting (`InputError.field`, a run-file path) goes to the red label `error_key(path)`
names. `TRAIN_FIELDS` does the same for the Training tab's settings (`[train]`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Error labels of the form: each is a red label under its group of fields.
MODEL = "model"
TARGETS = "targets"
CALIBRATION = "calibration"
TEXT_COLUMN = "text_column"
SIZES = "sizes"
QUANTIZATION = "quantization"
LORA = "lora"
METHOD = "method"
DEVICE = "device"
OUTPUT = "output"
GENERAL = "general"
ERROR_KEYS = (MODEL, TARGETS, CALIBRATION, TEXT_COLUMN, SIZES, QUANTIZATION, LORA, METHOD, DEVICE, OUTPUT, GENERAL)

# Widget kinds: how a value is read from and shown in the widget.
TEXT = "text"  # QLineEdit: the stripped text
COMBO_TEXT = "combo text"  # editable QComboBox: its stripped text
INT = "int"  # QSpinBox
FLOAT = "float"  # QDoubleSpinBox
CHECK = "check"  # QCheckBox
CHOICE = "choice"  # QComboBox: the current item's data
OPEN_CHOICE = "open choice"  # QComboBox whose value may be one it does not list yet (added)
TARGET_LIST = "targets"  # the target check boxes (the form's own logic)


@dataclass(frozen=True)
class FormField:
    name: str  # objectName of the widget
    path: str  # run-file path of the setting: "lora.rank", "output"
    kind: str
    error: str = GENERAL  # the label its errors go to
    blank_is_default: bool = False  # an empty text stands for the setting's default

    @property
    def numeric(self) -> bool:
        return self.kind in (INT, FLOAT)


FIELDS: tuple[FormField, ...] = (
    FormField("modelPathEdit", "model.path", TEXT, MODEL),
    FormField("dtypeCombo", "model.dtype", CHOICE, MODEL),
    FormField("trustRemoteCodeCheck", "model.trust_remote_code", CHECK, MODEL),
    FormField("targetsList", "lora.targets", TARGET_LIST, TARGETS),
    FormField("calibrationPathEdit", "calibration.source", TEXT, CALIBRATION),
    FormField("textColumnCombo", "calibration.text_column", COMBO_TEXT, TEXT_COLUMN, blank_is_default=True),
    FormField("datasetConfigEdit", "calibration.dataset_config", TEXT, CALIBRATION, blank_is_default=True),
    FormField("splitEdit", "calibration.split", TEXT, CALIBRATION, blank_is_default=True),
    FormField("samplesSpin", "calibration.samples", INT, SIZES),
    FormField("seqLenSpin", "calibration.seq_len", INT, SIZES),
    FormField("heldoutSpin", "calibration.heldout_samples", INT, SIZES),
    FormField("seedSpin", "calibration.seed", INT, SIZES),
    FormField("bitsCombo", "quantization.bits", CHOICE, QUANTIZATION),
    FormField("quantTypeCombo", "quantization.quant_type", CHOICE, QUANTIZATION),
    FormField("doubleQuantCheck", "quantization.double_quant", CHECK, QUANTIZATION),
    FormField("computeDtypeCombo", "quantization.compute_dtype", CHOICE, QUANTIZATION),
    FormField("rankSpin", "lora.rank", INT, LORA),
    FormField("alphaSpin", "lora.alpha", FLOAT, LORA),
    FormField("rsloraCheck", "lora.rslora", CHECK, LORA),
    FormField("methodCombo", "init.method", CHOICE, METHOD),
    FormField("inputsCombo", "init.inputs", CHOICE, METHOD),
    FormField("dampingSpin", "init.damping", FLOAT, METHOD),
    FormField("alsItersSpin", "init.als_iters", INT, METHOD),
    FormField("deviceCombo", "init.device", OPEN_CHOICE, DEVICE),
    FormField("batchSizeSpin", "init.batch_size", INT, METHOD),
    FormField("verifyCombo", "init.verify", CHOICE, METHOD),
    FormField("outputPathEdit", "output", TEXT, OUTPUT),
    FormField("overwriteCheck", "overwrite", CHECK, OUTPUT),
)
# The Training tab's settings (its output folder is the run folder, not a config field).
TRAIN_FIELDS: tuple[FormField, ...] = (
    FormField("trainDataEdit", "train.data", TEXT),
    FormField("dataFormatCombo", "train.data_format", CHOICE),
    FormField("trainTextColumnEdit", "train.text_column", TEXT, blank_is_default=True),
    FormField("validationDataEdit", "train.validation_data", TEXT, blank_is_default=True),
    FormField("validationFractionSpin", "train.validation_fraction", FLOAT),
    FormField("maxStepsSpin", "train.max_steps", INT),
    FormField("epochsSpin", "train.epochs", FLOAT),
    FormField("learningRateSpin", "train.learning_rate", FLOAT),
    FormField("trainBatchSizeSpin", "train.batch_size", INT),
    FormField("gradAccumSpin", "train.gradient_accumulation", INT),
    FormField("trainSeqLenSpin", "train.seq_len", INT),
    FormField("evalIntervalSpin", "train.eval_interval", INT),
    FormField("saveIntervalSpin", "train.save_interval", INT),
    FormField("warmupSpin", "train.warmup_steps", INT),
    FormField("trainSeedSpin", "train.seed", INT),
    FormField("trackingCombo", "train.tracking", CHOICE),
    FormField("runKindCombo", "train.launch", CHOICE),
    FormField("trainProcessesSpin", "train.processes", INT),
)
BY_NAME: dict[str, FormField] = {f.name: f for f in FIELDS + TRAIN_FIELDS}
BY_PATH: dict[str, FormField] = {f.path: f for f in FIELDS}
# Errors about a setting the form does not show go to its section's label.
SECTION_ERRORS = {"model": MODEL, "calibration": CALIBRATION, "quantization": QUANTIZATION, "lora": LORA,
                  "init": METHOD}  # fmt: skip


def error_key(path: str | None) -> str:
    """The error label for an error about the setting `path` (InputError.field)."""
    if not path:
        return GENERAL
    if path in BY_PATH:
        return BY_PATH[path].error
    section, dot, _ = path.partition(".")
    return SECTION_ERRORS.get(section, GENERAL) if dot else GENERAL


def config_tooltip(name: str) -> str | None:
    """The core's one-sentence help of the setting the widget `name` shows (None for others)."""
    f = BY_NAME.get(name)
    if f is None:
        return None
    from quailora_core.config import field_help

    return field_help(f.path).tooltip()


# ---------------------------------------------------------------------------- by path
def get_value(config: Any, path: str) -> Any:
    section, _, name = path.rpartition(".")
    return getattr(getattr(config, section) if section else config, name)


def set_value(config: Any, path: str, value: Any) -> None:
    section, _, name = path.rpartition(".")
    setattr(getattr(config, section) if section else config, name, value)


def default_value(path: str) -> Any:
    """The setting's default, as the core declares it."""
    from quailora_core.config import RunConfig

    return get_value(RunConfig(), path)
