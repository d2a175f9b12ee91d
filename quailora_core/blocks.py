"""Find a model's decoder blocks generically and capture what flows into the first one.

Every transformers causal LM keeps its repeated decoder blocks in one `nn.ModuleList`
(`model.layers` in Llama/Mistral/Qwen2/Phi, `gpt_neox.layers`, `model.decoder.layers`
in OPT, `transformer.h` in GPT-2 style models). Rather than keep a table per
architecture, we take the longest ModuleList whose children all share one class and
which holds `num_hidden_layers` entries when the config says so. The inputs of block 0
are captured with a forward pre-hook that records the call and then stops the forward
pass (the "capture then sequential" pattern of GPTQ tools), so nothing beyond the
embeddings runs and only one block at a time needs to sit on the accelerator.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import InputError


@dataclass
class DecoderBlocks:
    path: str  # e.g. "model.layers"
    blocks: nn.ModuleList


def find_decoder_blocks(model: nn.Module) -> DecoderBlocks:
    """The ModuleList of repeated decoder blocks, or an InputError that says it is missing."""
    expected = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        classes = {type(child) for child in module}
        if len(classes) != 1:
            continue
        if next(module[0].parameters(), None) is None:
            continue
        score = len(module) + (10_000 if expected is not None and len(module) == expected else 0)
        if best is None or score > best[0]:
            best = (score, name, module)
    if best is None:
        raise InputError(
            f"Could not find the decoder blocks of {type(model).__name__}.",
            "QuAILoRA needs a causal LM whose repeated blocks sit in one nn.ModuleList.",
        )
    return DecoderBlocks(path=best[1], blocks=best[2])


class _StopForward(Exception):
    """Raised by the capture hook to end the forward pass right at block 0."""


class HiddenStore:
    """Where the hidden states of all calibration sequences wait between blocks.

    In memory (the default) a handle is the tensor itself. With a folder, each batch's
    hidden states go to a file and only the batch being processed is in memory, so host
    memory no longer grows with the number of calibration samples (at the cost of
    writing and reading one block's activations per block).
    """

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self._count = 0

    def put(self, hidden: torch.Tensor) -> torch.Tensor | Path:
        hidden = hidden.detach().to("cpu")
        if self.folder is None:
            return hidden
        self._count += 1
        path = self.folder / f"h{self._count:07d}.pt"
        torch.save(hidden.contiguous(), path)
        return path

    def get(self, handle: torch.Tensor | Path) -> torch.Tensor:
        return torch.load(handle, weights_only=True) if isinstance(handle, Path) else handle

    def drop(self, handle: torch.Tensor | Path) -> None:
        if isinstance(handle, Path):
            handle.unlink(missing_ok=True)


@dataclass
class BlockBatch:
    """One batch of inputs to a decoder block: hidden states plus the keyword arguments
    (attention mask, rotary embeddings, positions) the model passed to block 0, reused
    unchanged for every block, plus the token mask that excludes padding from statistics."""

    hidden: torch.Tensor | Path  # a HiddenStore handle: on the host (RAM or a file), never on the accelerator
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    token_mask: torch.Tensor  # (batch, seq) bool, True for real tokens


def _embedding_modules(model: nn.Module, blocks: DecoderBlocks) -> list[nn.Module]:
    """Everything that may run before block 0 (embeddings, rotary tables), i.e. every
    module outside the block list and outside the output head."""
    out = []
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    block_params = {id(p) for p in blocks.blocks.parameters()}
    for module in model.modules():
        if module is head or module is blocks.blocks:
            continue
        own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if own and not any(id(p) in block_params for p in own):
            out.append(module)
    return out


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module,
    blocks: DecoderBlocks,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    batch_size: int,
    device: torch.device,
    store: HiddenStore,
) -> list[BlockBatch]:
    """Run the model up to block 0 on each batch and record block 0's inputs on `device`.

    Only the modules that run before block 0 are moved to `device` (and back after).
    """
    first = blocks.blocks[0]
    captured: list[tuple[tuple, dict]] = []

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append((args, kwargs))
        raise _StopForward

    pre = _embedding_modules(model, blocks)
    homes = [next(iter(list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)))).device for m in pre]
    for m in pre:
        m.to(device)
    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    batches: list[BlockBatch] = []
    try:
        for start in range(0, input_ids.shape[0], batch_size):
            ids = input_ids[start : start + batch_size].to(device)
            mask = attention_mask[start : start + batch_size].to(device)
            captured.clear()
            try:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            except _StopForward:
                pass
            if not captured:
                raise InputError(
                    "The model's forward pass never reached its first decoder block.",
                    "This architecture is not supported.",
                )
            args, kwargs = captured[0]
            hidden = args[0] if args else kwargs.pop("hidden_states")
            kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_value", "past_key_values")}
            kwargs["use_cache"] = False
            batches.append(
                BlockBatch(
                    hidden=store.put(hidden),
                    args=tuple(args[1:]),
                    kwargs=kwargs,
                    token_mask=mask.bool(),
                )
            )
    finally:
        handle.remove()
        for m, home in zip(pre, homes, strict=True):
            m.to(home)
    return batches


def run_block(block: nn.Module, batch: BlockBatch, store: HiddenStore) -> torch.Tensor | Path:
    """Run `block` on one batch and hand its output hidden states to `store`.

    Activations of all calibration sequences live on the host; only the batch being
    processed visits the accelerator, so accelerator memory does not grow with the number
    of calibration samples.
    """
    device = batch.token_mask.device
    out = block(store.get(batch.hidden).to(device, non_blocking=True), *batch.args, **batch.kwargs)
    return store.put(out[0] if isinstance(out, (tuple, list)) else out)


def target_linears(
    blocks: DecoderBlocks, model: nn.Module, targets: list[str]
) -> list[tuple[int, str, str, nn.Module]]:
    """(block index, full name, name inside the block, module) for every targeted layer.

    `targets` is ["all-linear"] (every nn.Linear inside the blocks, as peft's all-linear)
    or names matched as the last component(s) of the module path (`q_proj`,
    `self_attn.o_proj`), the way peft matches `target_modules`.
    """
    all_linear = [t.strip() for t in targets] == ["all-linear"]
    found = []
    unknown_kind = []
    for b, block in enumerate(blocks.blocks):
        for sub, module in block.named_modules():
            if not sub:
                continue
            full = f"{blocks.path}.{b}.{sub}"
            matched = all_linear or any(sub == t or sub.endswith("." + t) for t in targets)
            if not matched:
                continue
            if isinstance(module, nn.Linear):
                found.append((b, full, sub, module))
            elif not all_linear and not list(module.children()):
                unknown_kind.append((sub, type(module).__name__))
    if unknown_kind:
        sub, kind = unknown_kind[0]
        raise InputError(
            f"Target {sub!r} is a {kind}, not an nn.Linear.",
            "QuAILoRA initializes Linear layers only; choose other --targets.",
        )
    if not found and all_linear:
        kinds = sorted({type(m).__name__ for m in blocks.blocks[0].modules() if next(m.parameters(False), None) is not None})
        raise InputError(
            "The decoder blocks of this model hold no nn.Linear layers.",
            f"QuAILoRA initializes Linear layers only; the blocks hold {', '.join(kinds)}.",
        )
    if not found:
        names = sorted({sub.split(".")[-1] for sub, m in blocks.blocks[0].named_modules() if isinstance(m, nn.Linear)})
        raise InputError(
            f"No layer matches the targets {', '.join(targets)}.",
            f"Linear layers in each block: {', '.join(names) or 'none'}.",
        )
    if not all_linear:
        for t in targets:
            if not any(sub == t or sub.endswith("." + t) for _, _, sub, _ in found):
                names = sorted({sub.split(".")[-1] for _, _, sub, _ in found})
                raise InputError(f"Target {t!r} matches no layer.", f"Linear layers found: {', '.join(names)}.")
    return found
