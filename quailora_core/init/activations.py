"""The activation cache of an initialization: what each decoder block receives, block by block.

What each block receives (hidden states plus masks, rotary tables, positions: which can
differ per layer type) is recorded from one pass of the model's own forward with the
blocks stood in for (the "capture then sequential" pattern of GPTQ tools), so nothing but
the embeddings runs and only one block at a time needs to sit on the accelerator
afterwards. `run_block` then feeds a block its recorded calls to produce the next block's
inputs; `HiddenStore` keeps the hidden states between blocks in memory or on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quailora_core.errors import InputError
from quailora_core.model.blocks import DecoderBlocks

# (block index, device) -> the block with its weights on the device, for a `with` statement
BlockWeights = Callable[[int, torch.device], AbstractContextManager[nn.Module]]


class _StopForward(Exception):
    """Raised by the capture hooks to end the forward pass early."""


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
class BlockCall:
    """What the model passes to one block besides the hidden states: positional extras and
    keyword arguments (attention mask, rotary embeddings, positions, ...)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class BlockBatch:
    """One batch of inputs to the decoder blocks: the hidden states entering the next block,
    each block's own call arguments (recorded from the model's own forward pass: Gemma 2/3
    and other models with per-layer `layer_types` give sliding and full-attention blocks
    different masks and rotary tables), and the token mask that excludes padding."""

    hidden: torch.Tensor | Path  # a HiddenStore handle: on the host (RAM or a file), never on the accelerator
    calls: list[BlockCall]  # calls[b]: what block b receives
    token_mask: torch.Tensor  # (batch, seq) bool, True for real tokens

    def with_hidden(self, hidden: torch.Tensor | Path) -> BlockBatch:
        return BlockBatch(hidden, self.calls, self.token_mask)


def call_signature(calls: list[BlockCall]) -> list[int]:
    """For each block, the index of the first block that receives the very same arguments
    (same tensor objects): blocks of one layer type share a signature."""
    keys: list[tuple] = []
    out = []
    for call in calls:
        key = tuple(id(a) for a in call.args) + tuple((k, id(v)) for k, v in sorted(call.kwargs.items()))
        if key not in keys:
            keys.append(key)
        out.append(keys.index(key))
    return [next(i for i, s in enumerate(out) if s == sig) for sig in out]


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


def _split_call(args: tuple, kwargs: dict) -> tuple[torch.Tensor, BlockCall]:
    kwargs = dict(kwargs)
    hidden = args[0] if args else kwargs.pop("hidden_states")
    for cache in ("past_key_value", "past_key_values", "layer_past"):
        kwargs.pop(cache, None)
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return hidden, BlockCall(tuple(args[1:]), kwargs)


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module,
    blocks: DecoderBlocks,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    batch_size: int,
    device: torch.device,
    store: HiddenStore,
    block_weights: BlockWeights,
) -> list[BlockBatch]:
    """Run the model's own forward pass on each batch and record what every block receives.

    The blocks themselves do not run: each is replaced for the pass by a stand-in that
    records its call and hands its input straight on (in the block's own output form,
    learnt from one real call of block 0), and the last one ends the pass. So the model
    computes every per-layer mask and position embedding itself, as it will in training,
    at the cost of the embeddings alone. Only the modules that run outside the blocks are
    moved to `device` (and back after); block 0 has its weights (`block_weights(0, device)`)
    for its one real call.
    """
    n = len(blocks.blocks)
    captured: list[tuple[tuple, dict]] = []
    template: list[Any] = []

    def stand_in(index: int):
        def forward(*args: Any, **kwargs: Any) -> Any:
            captured.append((args, kwargs))
            if index == n - 1:
                raise _StopForward
            hidden = args[0] if args else kwargs["hidden_states"]
            out = template[0]
            if isinstance(out, tuple):
                return (hidden, *out[1:])
            return hidden

        return forward

    pre = _embedding_modules(model, blocks)
    homes = [next(iter(list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)))).device for m in pre]
    for m in pre:
        m.to(device)
    batches: list[BlockBatch] = []
    try:
        for start in range(0, input_ids.shape[0], batch_size):
            ids = input_ids[start : start + batch_size].to(device)
            mask = attention_mask[start : start + batch_size].to(device)
            if not template:
                template.append(_first_block_output(model, blocks, ids, mask, device, block_weights))
            captured.clear()
            for b, block in enumerate(blocks.blocks):
                block.forward = stand_in(b)
            try:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            except _StopForward:
                pass
            finally:
                for block in blocks.blocks:
                    del block.forward
            if len(captured) != n:
                raise InputError(
                    f"The model's forward pass called {len(captured)} of its {n} decoder blocks.",
                    "This architecture is not supported: its blocks do not run once each, in order.",
                )
            hidden, _ = _split_call(*captured[0])
            calls = [_split_call(args, kwargs)[1] for args, kwargs in captured]
            batches.append(BlockBatch(hidden=store.put(hidden), calls=calls, token_mask=mask.bool()))
    finally:
        for m, home in zip(pre, homes, strict=True):
            m.to(home)
    return batches


def _first_block_output(model: nn.Module, blocks: DecoderBlocks, ids, mask, device, block_weights: BlockWeights) -> Any:
    """Block 0's real output on one batch: the form (tensor or tuple) its stand-in returns."""
    first = blocks.blocks[0]
    seen: list[tuple[tuple, dict]] = []

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append((args, kwargs))
        raise _StopForward

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not seen:
        raise InputError(
            "The model's forward pass never reached its first decoder block.",
            "This architecture is not supported.",
        )
    hidden, call = _split_call(*seen[0])
    with block_weights(0, device) as block:
        return block(hidden, *call.args, **call.kwargs)


def run_block(block: nn.Module, index: int, batch: BlockBatch, store: HiddenStore) -> torch.Tensor | Path:
    """Run `block` (block number `index`) on one batch and hand its output hidden states to `store`.

    Activations of all calibration sequences live on the host; only the batch being
    processed visits the accelerator, so accelerator memory does not grow with the number
    of calibration samples.
    """
    device = batch.token_mask.device
    call = batch.calls[index]
    out = block(store.get(batch.hidden).to(device, non_blocking=True), *call.args, **call.kwargs)
    return store.put(out[0] if isinstance(out, (tuple, list)) else out)
