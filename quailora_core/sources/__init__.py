"""Where text and models come from: references (local path, hub id, `demo`), text loading
and preview through `datasets`, packing into token blocks, the built-in corpora."""

from quailora_core._exports import lazy

_TABLE = {
    "looks_like_hub_id": "references",
    "offline": "references",
    "load_texts": "text",
    "default_text": "text",
    "pack": "text",
    "load_calibration": "text",
    "preview": "text",
    "DataPreview": "text",
    "load_training_data": "text",
    "TrainingData": "text",
}
__all__ = sorted(_TABLE)
__getattr__, __dir__ = lazy(__name__, _TABLE)
