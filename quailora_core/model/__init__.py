"""The model as transformers, bitsandbytes and peft see it: its reference and config
(`info`), its decoder blocks (`blocks`), which layers get a LoRA and a Q (`targets`, asked
of transformers' quantizer and of peft), and the quantized base as training loads it (`base`)."""

from quailora_core._exports import lazy

_EXPORTS = {
    "info": "resolve_model_path load_model_config summarize_model ModelSummary",
    "blocks": "find_decoder_blocks",
    "targets": "plan_targets Target TargetPlan",
    "base": "load_quantized_base",
}
__all__ = sorted(n for names in _EXPORTS.values() for n in names.split())
__getattr__, __dir__ = lazy(__name__, _EXPORTS)
