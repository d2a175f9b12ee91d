"""Find a model's decoder blocks.

transformers names each model's language decoder (`get_decoder()`); inside it the
repeated blocks are the one `nn.ModuleList` whose children share a class and number
`num_hidden_layers` (`model.layers`, `model.language_model.layers`, `transformer.h`,
`model.decoder.layers`). Rather than keep a table per architecture, that list is found
by its shape. What the blocks receive is `init/activations.py`'s business.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from quailora_core.errors import InputError


@dataclass
class DecoderBlocks:
    path: str  # e.g. "model.layers"
    blocks: nn.ModuleList


def find_decoder_blocks(model: nn.Module) -> DecoderBlocks:
    """The ModuleList of repeated blocks of the model's language decoder, or an InputError.

    transformers says which submodule is the decoder (`get_decoder()`: the model itself
    for GPT-2 style models, `model.language_model` in a vision-language model), so a
    vision tower's blocks are never taken for the language model's.
    """
    text_config = model.config.get_text_config() if hasattr(getattr(model, "config", None), "get_text_config") else None
    expected = getattr(text_config, "num_hidden_layers", None)
    decoder = model.get_decoder() if callable(getattr(model, "get_decoder", None)) else None
    if not isinstance(decoder, nn.Module):
        decoder = model
    prefix = next((name for name, module in model.named_modules() if module is decoder), "")
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in decoder.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        classes = {type(child) for child in module}
        if len(classes) != 1:
            continue
        if next(module[0].parameters(), None) is None:
            continue
        score = len(module) + (10_000 if expected is not None and len(module) == expected else 0)
        if best is None or score > best[0]:
            best = (score, ".".join(p for p in (prefix, name) if p), module)
    if best is None:
        raise InputError(
            f"Could not find the decoder blocks of {type(model).__name__}.",
            "QuAILoRA needs a causal LM whose repeated blocks sit in one nn.ModuleList.",
        )
    return DecoderBlocks(path=best[1], blocks=best[2])


