"""The model as transformers, bitsandbytes and peft see it: its reference and config
(`info`), its decoder blocks (`blocks`), which layers get a LoRA and a Q (`targets`, asked
of transformers' quantizer and of peft), and the quantized base as training loads it (`base`)."""

from quailora_core._exports import lazy

_TABLE = {
    "resolve_model_path": "info",
    "load_model_config": "info",
    "summarize_model": "info",
    "ModelSummary": "info",
    "find_decoder_blocks": "blocks",
    "plan_targets": "targets",
    "Target": "targets",
    "TargetPlan": "targets",
    "load_quantized_base": "base",
}
__all__ = sorted(_TABLE)
__getattr__, __dir__ = lazy(__name__, _TABLE)
