"""Where text and models come from, up to token blocks.

`references` (what a reference names: local file kind, folder, hub id), `tables` (cheap
checks of tabular files with pyarrow), `text` (documents through `datasets`), `preview`
(what the app's data panel shows), `packing` (token blocks: calibration, eval, training,
demo), `training_data` (plain text or prompt/response rows), `corpus` (text that every
machine has).
"""

from quailora_core._exports import lazy

_TABLE = {
    "looks_like_model_id": "references",
    "looks_like_dataset_id": "references",
    "offline": "references",
    "load_texts": "text",
    "default_text": "text",
    "pack": "packing",
    "pack_all": "packing",
    "load_calibration": "packing",
    "CalibrationSet": "packing",
    "preview": "preview",
    "DataPreview": "preview",
    "load_training_data": "training_data",
    "TrainingData": "training_data",
}
__all__ = sorted(_TABLE)
__getattr__, __dir__ = lazy(__name__, _TABLE)
