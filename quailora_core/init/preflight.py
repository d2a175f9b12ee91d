"""Everything an initialization can check before loading weights, and what it found.

Config, model folder, which layers transformers quantizes and peft wraps (asked of them on
the model skeleton: `model/targets.py`), rank against layer sizes, calibration data. Each
refusal is an InputError naming its setting (`field`), raised before anything heavy; the
app's form check calls `plan_for` for the same answer the run will give.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from quailora_core.config import RunConfig
from quailora_core.device import resolve_device, resolve_dtype
from quailora_core.errors import InputError, about
from quailora_core.model.info import load_model_config, meta_model, model_class, resolve_model_path
from quailora_core.model.targets import TargetPlan, plan_targets
from quailora_core.sources.text import load_texts


@dataclass
class Preflight:
    """What the cheap checks found: everything needed to start the heavy work."""

    model_path: str
    device: torch.device
    dtype: torch.dtype
    texts: list[str]
    plan: TargetPlan
    hidden_size: int = 0
    auto_class: str = "AutoModelForCausalLM"

    @property
    def target_names(self) -> list[str]:
        return self.plan.names


def preflight(config: RunConfig) -> Preflight:
    """All checks that need no weights: config, model folder, which layers transformers
    quantizes and peft wraps (asked of them on the model skeleton), rank vs. layer sizes,
    calibration data. Raises InputError; writes nothing."""
    config.validate()
    device = resolve_device(config.init.device)
    dtype = resolve_dtype(config.model.dtype, device)
    with about("model.path"):
        model_path = resolve_model_path(config.model.path)
        hf_config = load_model_config(model_path, config.model.trust_remote_code)
        auto = model_class(hf_config, config.model.trust_remote_code)
    plan = _plan(config, hf_config, dtype)
    cal = config.calibration
    with about("calibration.source", "calibration.text_column"):
        texts = load_texts(cal.source, cal.text_column, cal.dataset_config, cal.split)
    text_config = hf_config.get_text_config()
    hidden = int(getattr(text_config, "hidden_size", 0) or 0)
    return Preflight(model_path, device, dtype, texts, plan, hidden, auto.__name__)


def plan_for(config: RunConfig) -> TargetPlan:
    """The layers `config` would initialize (targets.plan_targets), from the model's config
    alone: what the app's form check shows. Raises InputError as preflight would (a device
    that is not there is the device check's to report: the plan then assumes the CPU)."""
    try:
        device = resolve_device(config.init.device)
    except InputError:
        device = torch.device("cpu")
    dtype = resolve_dtype(config.model.dtype, device)
    with about("model.path"):
        hf_config = load_model_config(resolve_model_path(config.model.path), config.model.trust_remote_code)
    return _plan(config, hf_config, dtype)


def _plan(config: RunConfig, hf_config, dtype: torch.dtype) -> TargetPlan:
    with about("model.path"):
        _refuse_prequantized(hf_config)
        skeleton = meta_model(hf_config, config.model.trust_remote_code)
    with about("lora.targets"):
        return plan_targets(skeleton, hf_config, config.lora, config.quantization, dtype)


def _refuse_prequantized(hf_config) -> None:
    """QuAILoRA needs W itself: a checkpoint stored quantized (GPTQ, AWQ, FP8, bnb) has lost it."""
    record = getattr(hf_config, "quantization_config", None) or getattr(
        hf_config.get_text_config(), "quantization_config", None
    )
    if record:
        method = record.get("quant_method", "?") if isinstance(record, dict) else getattr(record, "quant_method", "?")
        raise InputError(
            f"This checkpoint is stored quantized ({method}); QuAILoRA needs the full-precision weights.",
            "Give the original bfloat16/float16/float32 checkpoint of the model.",
        )


def refuse_missing_weights(info: dict[str, Any]) -> None:
    """A checkpoint that lacks weights the model needs (a BERT saved without its LM head,
    loaded as a causal LM) gets them randomly initialized by transformers: the adapter
    would fit noise, and a 4-bit load of such layers cannot be trained. Refuse it."""
    missing = sorted(info.get("missing_keys", []))
    if missing:
        raise InputError(
            f"The checkpoint does not store {len(missing)} weight(s) this model needs (e.g. {missing[0]}); "
            "transformers would initialize them randomly.",
            "Give a checkpoint saved for causal language modelling (its *ForCausalLM or "
            "*ForConditionalGeneration class).",
        )
