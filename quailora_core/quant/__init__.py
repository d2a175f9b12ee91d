"""Q exactly as bitsandbytes builds it for a run's settings, and the BitsAndBytesConfig
training loads the base with."""

from quailora_core._exports import lazy

_EXPORTS = {
    "quantizer": "quantize_dequantize bnb_config dequantized_module_weight",
}
__all__ = sorted(n for names in _EXPORTS.values() for n in names.split())
__getattr__, __dir__ = lazy(__name__, _EXPORTS)
