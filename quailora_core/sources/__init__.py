"""Where text and models come from, up to token blocks.

`references` (what a reference names: local file kind, folder, hub id), `tables` (cheap
checks of tabular files with pyarrow), `text` (documents through `datasets`), `preview`
(what the app's data panel shows), `packing` (token blocks: calibration, eval, training,
demo), `training_data` (plain text or prompt/response rows), `corpus` (text that every
machine has).
"""

from quailora_core._exports import lazy

_EXPORTS = {
    "references": "looks_like_model_id looks_like_dataset_id offline",
    "text": "load_texts default_text",
    "packing": "pack pack_all load_calibration CalibrationSet",
    "preview": "DataPreview",
    "training_data": "load_training_data TrainingData",
}
__all__ = sorted(n for names in _EXPORTS.values() for n in names.split())
__getattr__, __dir__ = lazy(__name__, _EXPORTS)
