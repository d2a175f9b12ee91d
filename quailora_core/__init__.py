"""QuAILoRA Studio's engine: quantization-aware, calibrated LoRA initialization for QLoRA.

The public entry point is `run_init(RunConfig, on_event, cancel)` (`quailora_core.init`);
the rooms of the package: `sources` (text and model references, packing), `model`
(config, decoder blocks, targets, the quantized base), `quant` (Q as bitsandbytes builds
it), `init` (the initialization pipeline), `adapter` (the adapter folder and its record),
`train` (fine-tuning and run folders), `evaluate`, `demo`, and `cli` on top. This package
never imports Qt, and importing it changes no process-wide state.
"""

from quailora_core._exports import lazy

__version__ = "0.1.0"

_EXPORTS = {
    "init.pipeline": "run_init",
    "config": "RunConfig",
    "errors": "QuailoraError InputError EngineError Cancelled",
    "events": "CancelToken",
}
__all__ = sorted(n for names in _EXPORTS.values() for n in names.split())
__getattr__, __dir__ = lazy(__name__, _EXPORTS)
