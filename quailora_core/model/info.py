"""Describe a model from its config alone.

A model is a local folder, a hub id (for real users; tests never use one), or `demo`;
`resolve_model_path` (in `sources.references`, which imports no torch, and named here too)
says which folder or id a reference means.
Everything here is cheap: no weights are read. The summary builds the model on the
`meta` device (accelerate's `init_empty_weights`), which costs milliseconds and gives
the exact module tree, so the GUI can list linear modules and the engine can check
rank and target names before any heavy work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, PretrainedConfig

from quailora_core.demo.shipped import DEMO_MODEL
from quailora_core.errors import InputError
from quailora_core.model.blocks import find_decoder_blocks

# resolve_model_path lives with the other reference checks (no torch there); named here too,
# where this room's public API has always offered it.
from quailora_core.sources.references import resolve_model_path  # noqa: F401, E402


@dataclass
class ModelSummary:
    path: str
    architecture: str
    model_type: str
    n_params: int
    n_blocks: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    linear_modules: list[str] = field(default_factory=list)  # distinct leaf names inside the blocks
    linear_shapes: dict[str, tuple[int, int]] = field(default_factory=dict)  # leaf name -> (out, in)
    is_demo: bool = False


def load_model_config(ref: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """The model's config, with clear errors for a hub id that cannot be fetched."""
    try:
        return AutoConfig.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        text = str(exc)
        if Path(ref).exists():
            raise InputError(f"Could not read the model config in {ref!r}: {text.splitlines()[0]}", "") from None
        if "connect" in text.lower() or "offline" in text.lower() or "resolve" in text.lower():
            raise InputError(
                f"Cannot reach the Hugging Face Hub to fetch {ref!r} (offline?).",
                "Download the model first, or give a local model folder.",
            ) from None
        raise InputError(f"Model {ref!r} was not found: {text.splitlines()[0]}", "Check the hub id.") from None


def model_class(hf_config: PretrainedConfig, trust_remote_code: bool = False) -> type:
    """The auto class this checkpoint loads with, as transformers' own mappings say.

    A text model is an `AutoModelForCausalLM`; a vision-language model (Qwen2-VL, Llava,
    Gemma 3) is an `AutoModelForImageTextToText`, and its adapter must load on that very
    class, so the initialization, the training run and `eval` all load through here.
    Remote-code models declare their classes in `auto_map`.
    """
    mapped = type(hf_config)
    if mapped in AutoModelForCausalLM._model_mapping:
        return AutoModelForCausalLM
    if mapped in AutoModelForImageTextToText._model_mapping:
        return AutoModelForImageTextToText
    auto_map = getattr(hf_config, "auto_map", None) or {}
    if trust_remote_code and "AutoModelForCausalLM" in auto_map:
        return AutoModelForCausalLM
    if trust_remote_code and "AutoModelForImageTextToText" in auto_map:
        return AutoModelForImageTextToText
    raise InputError(
        f"{type(hf_config).__name__} ({getattr(hf_config, 'model_type', '?')}) is not a causal or "
        "vision-language model that transformers can load for text generation.",
        "QuAILoRA initializes causal LMs (AutoModelForCausalLM) and the language model of "
        "vision-language models (AutoModelForImageTextToText).",
    )


AUTO_CLASSES = {"AutoModelForCausalLM": AutoModelForCausalLM, "AutoModelForImageTextToText": AutoModelForImageTextToText}


def meta_model(hf_config: PretrainedConfig, trust_remote_code: bool = False) -> nn.Module:
    """The model's module tree on the meta device: shapes and names, no memory."""
    from accelerate import init_empty_weights

    cls = model_class(hf_config, trust_remote_code)
    try:
        with init_empty_weights():
            return cls.from_config(hf_config, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        raise InputError(
            f"transformers cannot build {type(hf_config).__name__}: {str(exc).splitlines()[0]}",
            "Check the model's config.json, or upgrade transformers.",
        ) from None


def summarize_model(ref: str, trust_remote_code: bool = False) -> ModelSummary:
    """Architecture, size and linear modules of a model, from its config alone (fast)."""
    is_demo = ref == DEMO_MODEL
    path = resolve_model_path(ref)
    hf_config = load_model_config(path, trust_remote_code)
    model = meta_model(hf_config, trust_remote_code)
    blocks = find_decoder_blocks(model)
    text_config = hf_config.get_text_config()
    from quailora_core.model.targets import linear_leaves

    names: list[str] = []
    shapes: dict[str, tuple[int, int]] = {}
    prefix = f"{blocks.path}.0."
    for name, (_kind, n_out, n_in) in linear_leaves(model).items():
        if name.startswith(prefix):
            leaf = name.split(".")[-1]
            if leaf not in shapes:
                names.append(leaf)
                shapes[leaf] = (n_out, n_in)
    n_params = sum(p.numel() for p in model.parameters())
    return ModelSummary(
        path=path,
        architecture=(getattr(hf_config, "architectures", None) or [type(model).__name__])[0],
        model_type=getattr(hf_config, "model_type", ""),
        n_params=int(n_params),
        n_blocks=len(blocks.blocks),
        hidden_size=int(getattr(text_config, "hidden_size", 0) or 0),
        intermediate_size=int(getattr(text_config, "intermediate_size", 0) or 0),
        vocab_size=int(getattr(text_config, "vocab_size", 0) or 0),
        linear_modules=names,
        linear_shapes=shapes,
        is_demo=is_demo,
    )


def dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
