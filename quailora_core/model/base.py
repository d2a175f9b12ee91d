"""Load the base model exactly as an adapter expects: the class, dtype and quantizer it
was computed for, read from its `quailora.json`.

Training, `quailora eval` and the engine's self-check all load through here, so the
base every one of them sees is the base fine-tuning sees.
"""

from __future__ import annotations

from typing import Any

from quailora_core.config import QuantConfig


def auto_class(meta: dict[str, Any]) -> type:
    """The transformers auto class the adapter's base loads with (text or vision-language)."""
    from quailora_core.model.info import AUTO_CLASSES

    return AUTO_CLASSES[meta["base_model"].get("auto_class", "AutoModelForCausalLM")]


def recorded_quantization(meta: dict[str, Any]) -> tuple[QuantConfig, str]:
    """The QuantConfig and load dtype name the adapter was computed for (from quailora.json)."""
    q = meta["quantization"]
    if q["bits"] == 8:
        return QuantConfig(bits=8), q["load_dtype"]
    quant = QuantConfig(
        bits=4,
        quant_type=q["quant_type"],
        double_quant=q["double_quant"],
        compute_dtype=q["compute_dtype"],
        quant_storage=q["quant_storage"],
        blocksize=q.get("blocksize", 64),
    )
    return quant, q["load_dtype"]


def recorded_bnb_config(meta: dict[str, Any]):
    """(BitsAndBytesConfig, load dtype) exactly as the adapter was computed for."""
    import torch

    from quailora_core.quant.quantizer import bnb_config

    quant, dtype_name = recorded_quantization(meta)
    dtype = getattr(torch, dtype_name)
    return bnb_config(quant, dtype), dtype


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


def load_quantized_base(model_path: str, meta: dict[str, Any], device=None, trust_remote_code: bool = False):
    """The base model loaded exactly as the adapter expects: the recorded BitsAndBytesConfig
    and load dtype; on `device` (a CUDA device, or None for CPU)."""
    bnb, dtype = recorded_bnb_config(meta)
    kwargs: dict[str, Any] = {"device_map": {"": device}} if device is not None else {}
    model = auto_class(meta).from_pretrained(
        model_path, quantization_config=bnb, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs
    )
    disable_cpu_packing(model)
    return model
