"""Q exactly as bitsandbytes builds it for a run's settings, and the BitsAndBytesConfig
training loads the base with."""

from quailora_core._exports import lazy

_TABLE = {
    "quantize_dequantize": "quantizer",
    "bnb_config": "quantizer",
    "dequantized_module_weight": "quantizer",
}
__all__ = sorted(_TABLE)
__getattr__, __dir__ = lazy(__name__, _TABLE)
