"""User-facing names and one-sentence tooltips, kept apart from the widgets that show them.

The choices' keys are the core's (`quailora_core.config.METHODS`, `INPUT_SOURCES`,
`VERIFY_MODES`, `QUANT_TYPES`: a test holds them equal). The tooltip of a widget that shows a
setting is the core's help of that setting (`form_fields.config_tooltip`); `TOOLTIPS` holds
the others: buttons, charts, labels.
"""

from __future__ import annotations

from quailora_core.history import METHOD_SHORT as _METHOD_SHORT

from .form_fields import config_tooltip

METHOD_LABELS: dict[str, str] = {
    "quailora": "QuAILoRA (calibrated, ALS)",
    "exact": "Exact closed form (calibrated)",
    "loftq": "LoftQ (uncalibrated SVD)",
    "qlora": "Plain QLoRA (B = 0)",
}
METHOD_SHORT = _METHOD_SHORT  # the core's short names: a run is named the same in the History and the compare list

INPUT_LABELS: dict[str, str] = {
    "fp": "Full-precision inputs",
    "propagated": "Propagated (quantized earlier layers)",
    "asymmetric": "Asymmetric (fp target, quantized input)",
}

VERIFY_LABELS: dict[str, str] = {
    "sample": "Sample of layers (first, last, each layer type)",
    "all": "Every layer",
    "off": "Off (not recommended)",
}

QUANT_TYPE_LABELS: dict[str, str] = {"nf4": "NF4", "fp4": "FP4"}

DEMO_MODEL_LABEL = "Demo model (built in)"
DEMO_CALIBRATION_LABEL = "Built-in sample text"

# objectName -> tooltip of a widget that shows no setting: one sentence (with the usual value).
TOOLTIPS: dict[str, str] = {
    "modelMenuButton": "Pick the demo model or a recently used model.",
    "modelBrowseButton": "Choose a local model folder (one that holds config.json).",
    "allLinearCheck": "Target every linear module of the model, as 'all-linear' does in peft (usual: on).",
    "calibrationMenuButton": "Pick the built-in sample text or a recently used source.",
    "calibrationBrowseButton": "Choose a local calibration file.",
    "calibrationFolderButton": "Choose a local folder of calibration files.",
    "outputBrowseButton": "Choose the folder the adapter is written to.",
    "runButton": "Initialize the LoRA adapter with these settings (Ctrl+R).",
    "cancelButton": "Stop the run after the current layer; nothing is written to disk.",
    "exportAdapterButton": "Copy the finished adapter to a folder of your choice.",
    "exportChartsButton": "Save the charts as PNG images.",
    "exportCsvButton": "Save the per-layer results as a CSV file.",
    "launchTrainingButton": "Export the run into the output folder and fine-tune the adapter there, "
    "with live curves (usual: after checking the settings on the left).",
    "exportRunButton": "Write run.toml, the adapter, the data and launch.sh to a folder, to train here or "
    "on a GPU machine (usual: a new folder).",
    "stopTrainingButton": "Stop training at the end of the current step; a checkpoint is saved there "
    "(usual: when the loss has levelled off).",
    "resumeTrainingButton": "Continue the stopped training from its last checkpoint, up to Max steps (usual: "
    "after Stop).",
    "trainDataBrowseButton": "Choose a local training data file.",
    "trainOutputEdit": "Folder the run is exported to and trained in: run.toml, adapter/, launch.sh and "
    "output/ with checkpoints and the trained adapter (usual: a new folder).",
    "trainOutputBrowseButton": "Choose the training output folder.",
    "perplexityChart": "Perplexity on the validation data, exp(validation loss), at each evaluation.",
    "lrChart": "Learning rate of each step, as the scheduler set it.",
    "trainStatsLabel": "Latest step, loss, learning rate, tokens per second, validation perplexity and "
    "time left.",
    "logScaleCheck": "Show errors on a logarithmic axis, since errors after initialization are often 10-100x "
    "smaller (usual: on).",
    "compareCombo": "A finished run of this session to overlay on the charts (usual: the previous run).",
    "resultsFilterEdit": "Show only layers whose name contains this text (usual: empty).",
    "layerErrorChart": "Relative output error of each layer on calibration text (top) and held-out text "
    "(bottom), ‖(W − Q − BA)·X‖² / ‖W·X‖²: the share of the full-precision layer's output that the quantized "
    "layer plus LoRA gets wrong (before = plain QLoRA, BA = 0); hover a bar for exact numbers.",
    "heatMap": "Share of the calibrated error removed, 1 - after/before, per block and module.",
    "resultsTable": "Per-layer results; click a header to sort.",
    "rankTable": "Each training process of a multi-process run at its last logged step: its machine, device, "
    "seconds per step (a slow GPU shows here, the others wait for it), RAM and peak GPU memory.",
    "lossChart": "Training loss per step (thin line, with its moving average) and validation loss (points).",
    "progressBar": "Layers initialized, or training steps done, so far.",
    "logView": "Messages from the engine.",
}


def tooltip(name: str) -> str | None:
    """The tooltip of the widget named `name`: its setting's help from the core, else TOOLTIPS'."""
    return config_tooltip(name) or TOOLTIPS.get(name)

# [train] launch: the run kinds of an exported run folder (quailora_core.config.RUN_KINDS)
# (short: the settings column is narrow; the field's tooltip says what each does)
RUN_KIND_LABELS = {"single": "one machine", "ddp": "data parallel", "fsdp": "FSDP-QLoRA (sharded)",
                   "deepspeed": "DeepSpeed ZeRO-3"}  # fmt: skip
# ... and their names in a sentence
RUN_KIND_NAMES = {"single": "A one-machine run", "ddp": "Data parallel", "fsdp": "FSDP-QLoRA",
                  "deepspeed": "DeepSpeed ZeRO-3"}  # fmt: skip
