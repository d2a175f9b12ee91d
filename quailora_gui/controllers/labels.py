"""User-facing names and one-sentence tooltips, kept apart from the widgets that show them."""

from __future__ import annotations

METHOD_LABELS: dict[str, str] = {
    "quailora": "QuAILoRA (calibrated, ALS)",
    "exact": "Exact closed form (calibrated)",
    "loftq": "LoftQ (uncalibrated SVD)",
    "qlora": "Plain QLoRA (B = 0)",
}
METHOD_SHORT: dict[str, str] = {"quailora": "QuAILoRA", "exact": "exact", "loftq": "LoftQ", "qlora": "QLoRA"}

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

# objectName -> tooltip: one sentence with the usual value.
TOOLTIPS: dict[str, str] = {
    "modelPathEdit": "Local model folder, Hugging Face hub id, or 'demo' for the small model built "
    "on this machine (usual: a local folder with config.json).",
    "modelMenuButton": "Pick the demo model or a recently used model.",
    "modelBrowseButton": "Choose a local model folder (one that holds config.json).",
    "trustRemoteCodeCheck": "Allow the model's own Python code to run when loading it (usually off).",
    "dtypeCombo": "Precision the full-precision weights are loaded in (usual: auto = bfloat16 on GPU, "
    "float32 on CPU).",
    "targetsList": "Linear modules that get a LoRA pair (usual: all linear modules checked).",
    "allLinearCheck": "Target every linear module of the model, as 'all-linear' does in peft (usual: on).",
    "calibrationPathEdit": "Calibration text: a .txt/.jsonl/.json/.csv/.parquet file, a folder, a hub "
    "dataset id, or 'demo' for the built-in sample text (usual: text like your fine-tuning data).",
    "calibrationMenuButton": "Pick the built-in sample text or a recently used source.",
    "calibrationBrowseButton": "Choose a local calibration file.",
    "calibrationFolderButton": "Choose a local folder of calibration files.",
    "textColumnCombo": "Column of a tabular file that holds the text (usual: text).",
    "datasetConfigEdit": "Configuration name of a hub dataset, if it has several (usual: empty).",
    "splitEdit": "Split of a hub dataset to read (usual: train).",
    "samplesSpin": "Number of calibration sequences (usual: 128).",
    "seqLenSpin": "Tokens per calibration sequence (usual: 512).",
    "heldoutSpin": "Extra sequences kept apart to measure over-fitting of the calibration set (usual: 16).",
    "seedSpin": "Seed that picks the calibration sequences, for a reproducible run (usual: 0).",
    "bitsCombo": "Bits per weight of the quantized base model fine-tuning will use (usual: 4).",
    "quantTypeCombo": "4-bit data type of bitsandbytes (usual: NF4).",
    "doubleQuantCheck": "Quantize the quantization constants too, as QLoRA does (usual: on).",
    "computeDtypeCombo": "Compute dtype of the 4-bit layers, bnb_4bit_compute_dtype (usual: auto = load "
    "dtype).",
    "rankSpin": "LoRA rank r: the number of directions the adapter can correct (usual: 16).",
    "alphaSpin": "LoRA alpha: the adapter is scaled by alpha / r (usual: equal to the rank).",
    "rsloraCheck": "Scale by alpha / sqrt(r) instead of alpha / r, as rsLoRA does (usual: off).",
    "methodCombo": "How the LoRA pair is initialized (usual: QuAILoRA).",
    "inputsCombo": "Where the calibration inputs of each layer come from (usual: full-precision inputs).",
    "dampingSpin": "Damping lambda added to the input Gram matrix, as in GPTQ (usual: 0.01).",
    "alsItersSpin": "Alternating least-squares iterations of the QuAILoRA solver (usual: 20).",
    "batchSizeSpin": "Calibration sequences per forward pass through a block (usual: 8).",
    "deviceCombo": "Where the engine computes (usual: auto = the GPU when there is one).",
    "outputPathEdit": "Folder the adapter is written to; it must not exist or be empty (usual: a new "
    "folder).",
    "outputBrowseButton": "Choose the folder the adapter is written to.",
    "overwriteCheck": "Replace the contents of an existing, non-empty output folder (usual: off).",
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
    "trainDataEdit": "Training text (.txt, .md, a folder) or prompt/response JSON lines, a hub dataset id, "
    "or 'demo' for the built-in fine-tuning text (usual: your task's data).",
    "trainDataBrowseButton": "Choose a local training data file.",
    "maxStepsSpin": "Optimizer steps to train for (usual: 100 to 1000).",
    "epochsSpin": "Passes over the data; above 0 it replaces Max steps (usual: off).",
    "learningRateSpin": "Peak learning rate of the adapter (usual: 0.0002, QLoRA uses 1e-4 to 2e-4).",
    "trainBatchSizeSpin": "Sequences per step and GPU (usual: 4).",
    "gradAccumSpin": "Micro-batches summed into each optimizer step (usual: 1).",
    "trainSeqLenSpin": "Tokens per training sequence (usual: 512).",
    "evalIntervalSpin": "Measure validation loss and perplexity every this many steps (usual: 50).",
    "saveIntervalSpin": "Save a checkpoint every this many steps; the last two are kept (usual: 50).",
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
    "layerErrorChart": "Relative error of each layer before (QLoRA) and after initialization; hover a "
    "bar for exact numbers.",
    "heatMap": "Share of the calibrated error removed, 1 - after/before, per block and module.",
    "resultsTable": "Per-layer results; click a header to sort.",
    "lossChart": "Training loss per step (thin line, with its moving average) and validation loss (points).",
    "progressBar": "Layers initialized, or training steps done, so far.",
    "logView": "Messages from the engine.",
}
