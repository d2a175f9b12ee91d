"""Load the base model exactly as an adapter expects: the class, dtype and quantizer its
`AdapterRecord` says it was computed for.

Training, `quailora eval` and the engine's self-check all load through here, so the
base every one of them sees is the base fine-tuning sees.
"""

from __future__ import annotations

from typing import Any

from quailora_core.adapter.record import AdapterRecord


def auto_class(record: AdapterRecord) -> type:
    """The transformers auto class the adapter's base loads with (text or vision-language)."""
    from quailora_core.model.info import AUTO_CLASSES

    return AUTO_CLASSES[record.base_model.auto_class]


def disable_cpu_packing(model) -> None:
    """Keep bitsandbytes' 4-bit layers on the dequantize path on CPU.

    On CPUs with AVX512-BF16, bitsandbytes repacks a Linear4bit's weight for a faster
    inference kernel the first time it runs without gradients; that repacking fails for
    in_features that are not a multiple of the block size, rounds absmax to bfloat16 (so the
    layer no longer computes with exactly Q), and is not meant for training. Off everywhere.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def load_quantized_base(model_path: str, record: AdapterRecord, device=None, trust_remote_code: bool = False):
    """The base model loaded exactly as the adapter expects: the recorded BitsAndBytesConfig
    and load dtype; on `device` (a CUDA device, or None for CPU)."""
    kwargs: dict[str, Any] = {"device_map": {"": device}} if device is not None else {}
    model = auto_class(record).from_pretrained(
        model_path,
        quantization_config=record.quantization.bnb(),
        dtype=record.quantization.dtype(),
        trust_remote_code=trust_remote_code,
        **kwargs,
    )
    disable_cpu_packing(model)
    return model
