"""The weight `Q` that fine-tuning will actually use, computed with bitsandbytes itself.

`Q` must be bit-for-bit what the module that `transformers` builds from the same
`BitsAndBytesConfig` dequantizes to, so this file does exactly what bitsandbytes'
`Params4bit._quantize` / `Int8Params._quantize` do when transformers loads a model
(same functions, same arguments, same input dtype), and then dequantizes. It also
builds that `BitsAndBytesConfig`, so the engine, the adapter's record and the training
run all derive the quantizer from one place.
"""

from __future__ import annotations

import bitsandbytes.functional as bnbf
import torch
from transformers import BitsAndBytesConfig

from quailora_core.config import QuantConfig
from quailora_core.device import resolve_dtype

_STORAGE = {"uint8": torch.uint8, "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def compute_dtype(q: QuantConfig, load_dtype: torch.dtype) -> torch.dtype:
    """bnb_4bit_compute_dtype: `auto` follows the load dtype (it does not change Q)."""
    if q.compute_dtype == "auto":
        return load_dtype
    return resolve_dtype(q.compute_dtype, torch.device("cpu"))


def bnb_config(q: QuantConfig, load_dtype: torch.dtype) -> BitsAndBytesConfig:
    """The BitsAndBytesConfig a training run must load the base with."""
    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=compute_dtype(q, load_dtype),
        bnb_4bit_quant_storage=_STORAGE[q.quant_storage],
    )


@torch.no_grad()
def quantize_dequantize(weight: torch.Tensor, q: QuantConfig) -> torch.Tensor:
    """Return `dequantize(quantize(weight))` exactly as the bitsandbytes module will hold it.

    `weight` must be in the load dtype and on the device that the training run quantizes
    on (bitsandbytes' CPU and CUDA kernels agree to the bit on the tested settings, but
    quantizing where training will is the safe rule). The result has the dtype the
    dequantized bitsandbytes weight has: the load dtype for 4 bit, float32 for 8 bit.
    """
    w = weight.detach().contiguous()
    if q.bits == 4:
        packed, state = bnbf.quantize_4bit(
            w,
            blocksize=q.blocksize,
            compress_statistics=q.double_quant,
            quant_type=q.quant_type,
            quant_storage=_STORAGE[q.quant_storage],
        )
        return bnbf.dequantize_4bit(packed, state)
    if q.bits == 8:
        cb, scb, _ = bnbf.int8_vectorwise_quant(w.to(dtype=torch.float16))
        return bnbf.int8_vectorwise_dequant(cb, scb)
    raise ValueError(f"bits must be 4 or 8, got {q.bits}")


@torch.no_grad()
def dequantized_module_weight(module: torch.nn.Module) -> torch.Tensor:
    """The dequantized weight of a bitsandbytes Linear4bit / Linear8bitLt built by transformers.

    Used by tests and `quailora eval` to check what a training run really sees.
    """
    weight = module.weight
    state = getattr(weight, "quant_state", None)
    if state is not None:
        return bnbf.dequantize_4bit(weight.data, state)
    scb = getattr(weight, "SCB", None)
    if scb is None:
        scb = getattr(getattr(module, "state", None), "SCB", None)
    if weight.dtype == torch.int8 and scb is not None:
        return bnbf.int8_vectorwise_dequant(weight.data, scb)
    return weight.data.clone()
