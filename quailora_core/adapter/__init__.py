"""The adapter folder on disk: peft's files, the typed `quailora.json` record, the model card."""

from quailora_core._exports import lazy

_TABLE = {
    "write_adapter": "writer",
    "read_metadata": "writer",
    "copy_adapter": "writer",
    "METADATA_FILE": "writer",
}
__all__ = sorted(_TABLE)
__getattr__, __dir__ = lazy(__name__, _TABLE)
