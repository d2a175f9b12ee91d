"""The acceptance rule of ALGORITHM.md, computed here without the engine's code.

Load the base as the fine-tuning run will (transformers + the adapter's recorded
BitsAndBytesConfig + `PeftModel.from_pretrained`), take each target's `Q + s·B·A` from the
loaded modules and `H` from one plain forward pass of the full-precision model, and
recompute the calibrated error: it must match what the engine reported.
"""

from __future__ import annotations

import torch
from helpers import read_metadata
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer
from transformers.pytorch_utils import Conv1D

from quailora_core.config import RunConfig
from quailora_core.quant.quantizer import bnb_config, dequantized_module_weight
from quailora_core.sources.packing import pack
from quailora_core.sources.text import load_texts

_CLASSES = {"AutoModelForCausalLM": AutoModelForCausalLM, "AutoModelForImageTextToText": AutoModelForImageTextToText}


def _weight(module: torch.nn.Module) -> torch.Tensor:
    w = module.weight
    return w.T if isinstance(module, Conv1D) else w


def independent_grams(cfg: RunConfig, names: list[str], cls=AutoModelForCausalLM) -> dict[str, torch.Tensor]:
    """H = X^T X / N for each target, from a plain full forward pass (padding excluded)."""
    tok = AutoTokenizer.from_pretrained(cfg.model.path)
    cal = cfg.calibration
    data = pack(load_texts(cal.source, cal.text_column), tok, cal.samples, cal.seq_len, cal.heldout_samples, cal.seed)
    model = cls.from_pretrained(cfg.model.path, dtype=torch.float32)
    sums: dict[str, torch.Tensor] = {n: 0 for n in names}
    counts = {n: 0 for n in names}
    mask = data.attention_mask.bool()

    def hook(name):
        def fn(_m, args):
            x = args[0]
            # (batch, seq) mask over (batch, ..., seq, in) inputs (DeepSeek's kv_b_proj has a head axis)
            if x.dim() == 2:  # flattened to (batch * seq, in), as OPT's MLP does
                x = x[mask.reshape(-1)].double()
            else:
                m = mask.view(mask.shape[0], *([1] * (x.dim() - 3)), mask.shape[1]).expand(x.shape[:-1])
                x = x[m].double()
            sums[name] = sums[name] + x.T @ x
            counts[name] += x.shape[0]

        return fn

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    with torch.no_grad():
        model(input_ids=data.input_ids, attention_mask=data.attention_mask, use_cache=False)
    for h in handles:
        h.remove()
    return {n: sums[n] / counts[n] for n in names}


def effective_weights(cfg: RunConfig, adapter: str, cls=AutoModelForCausalLM) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(W, Q + s*B@A) per target, from the model loaded exactly as training loads it."""
    meta = read_metadata(adapter)
    load_dtype = getattr(torch, meta["quantization"]["load_dtype"])
    base = cls.from_pretrained(
        cfg.model.path, dtype=load_dtype, quantization_config=bnb_config(cfg.quantization, load_dtype)
    )
    model = PeftModel.from_pretrained(base, adapter)
    full = cls.from_pretrained(cfg.model.path, dtype=torch.float32)
    out = {}
    for name in meta["targets"]:
        layer = model.base_model.model.get_submodule(name)
        base_layer = layer.base_layer
        q = dequantized_module_weight(base_layer)
        if q.shape != layer.lora_B["default"].weight.shape[:1] + layer.lora_A["default"].weight.shape[1:]:
            q = q.T
        a, b = layer.lora_A["default"].weight.double(), layer.lora_B["default"].weight.double()
        out[name] = (_weight(full.get_submodule(name)).double(), q.double() + layer.scaling["default"] * b @ a)
    return out


def wrapped_layers(adapter: str) -> set[str]:
    """The layers peft wraps when it loads the adapter on the quantized base."""
    from peft.tuners.lora import LoraLayer

    meta = read_metadata(adapter)
    cls = _CLASSES[meta["base_model"].get("auto_class", "AutoModelForCausalLM")]
    load_dtype = getattr(torch, meta["quantization"]["load_dtype"])
    bnb = bnb_config(RunConfig().quantization, load_dtype) if meta["quantization"]["bits"] == 4 else None
    base = cls.from_pretrained(meta["base_model"]["path"], dtype=load_dtype, quantization_config=bnb)
    model = PeftModel.from_pretrained(base, adapter).base_model.model
    return {name for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def recomputed_errors(cfg: RunConfig, adapter: str) -> dict[str, float]:
    """The calibrated error after initialization of every target, recomputed independently."""
    meta = read_metadata(adapter)
    cls = _CLASSES[meta["base_model"].get("auto_class", "AutoModelForCausalLM")]
    weights = effective_weights(cfg, adapter, cls)
    grams = independent_grams(cfg, list(weights), cls)
    out = {}
    for name, (w, eff) in weights.items():
        h, d = grams[name], w - eff
        out[name] = float((((d @ h) * d).sum() / ((w @ h) * w).sum()).detach())
    return out
