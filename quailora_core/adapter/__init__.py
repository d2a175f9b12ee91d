"""The adapter folder on disk: peft's files, the typed `quailora.json` record, the model card."""

from quailora_core._exports import lazy

_TABLE = {
    "AdapterRecord": "record",
    "BaseModelRecord": "record",
    "METADATA_FILE": "record",
    "write_adapter": "writer",
    "copy_adapter": "writer",
    "model_card": "card",
}
__all__ = sorted(_TABLE)
__getattr__, __dir__ = lazy(__name__, _TABLE)
