"""The adapter folder on disk: peft's files, the typed `quailora.json` record, the model card."""

from quailora_core._exports import lazy

_EXPORTS = {
    "record": "AdapterRecord BaseModelRecord METADATA_FILE",
    "writer": "write_adapter copy_adapter",
    "card": "model_card",
}
__all__ = sorted(n for names in _EXPORTS.values() for n in names.split())
__getattr__, __dir__ = lazy(__name__, _EXPORTS)
