"""The full-precision model with its weights left in the checkpoint until their turn.

A 70B model does not fit in host memory, and the engine never needs more than one decoder
block at a time. So the model is loaded the way transformers loads a model too big for its
machine (big-model inference: a `device_map` and accelerate's offloading), with every
decoder block, and an output head that is not tied to the input embeddings, mapped to
`"disk"`: they stay on the meta device, and transformers' offload index points at their
tensors in the checkpoint's own safetensors shards (nothing is copied; a `.bin` checkpoint,
or weights that transformers converts while loading such as fused MoE experts, are re-saved
into a temporary folder first). Everything else (embeddings, rotary tables, final norm) is
loaded on the run's device. Which tensor sits in which file, under which name, in which
dtype, tied to what: all of that is transformers' answer, not ours.

Two ways to use the result:

- as it is, a plain model whose `forward` works: accelerate's hooks read each offloaded
  module's weights when it runs and drop them after (the self-check's whole-model passes);
- `detach_blocks` then `block_weights(b)`: the block's weights are read onto the device
  for as long as the engine works on it, and released after (the engine's walk, which
  edits weights in place and so must not have them re-read behind its back).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from quailora_core.model.blocks import DecoderBlocks, find_decoder_blocks
from quailora_core.units import size_text

DISK = "disk"


@dataclass
class StreamedModel:
    """A model whose decoder blocks (and untied head) live in the checkpoint, not in memory."""

    model: nn.Module
    blocks: DecoderBlocks
    loading_info: dict
    notes: list[str] = field(default_factory=list)
    _weights: Mapping[str, torch.Tensor] = field(init=False, repr=False)  # full name -> tensor, read on access

    def __post_init__(self) -> None:
        self._weights = offloaded_weights(self.model)

    def detach_blocks(self) -> None:
        """Take accelerate's hooks off the blocks: from now on a block has weights only inside
        `block_weights`, and its forward is the plain module's."""
        from accelerate.hooks import remove_hook_from_module

        for block in self.blocks.blocks:
            remove_hook_from_module(block, recurse=True)

    def release_resident(self) -> None:
        """Send every weight outside the blocks (embeddings, final norm, a tied head) to the meta
        device: once each block's inputs are recorded, the walk needs none of them."""
        from accelerate.utils import set_module_tensor_to_device

        inside = {id(t) for t in [*self.blocks.blocks.parameters(), *self.blocks.blocks.buffers()]}
        for name, tensor in [*self.model.named_parameters(), *self.model.named_buffers()]:
            if id(tensor) not in inside and tensor.device.type != "meta":
                set_module_tensor_to_device(self.model, name, "meta")

    def block_weights(self, index: int, device: torch.device) -> contextlib.AbstractContextManager[nn.Module]:
        """Block `index` with its weights read onto `device` (see `materialized`)."""
        return self.materialized(f"{self.blocks.path}.{index}", device)

    @contextlib.contextmanager
    def materialized(self, name: str, device: torch.device) -> Iterator[nn.Module]:
        """Module `name` with its offloaded weights read from the checkpoint onto `device`; they
        go back to the meta device (memory released) when the caller is done, whatever it did
        to them meanwhile."""
        from accelerate.utils import set_module_tensor_to_device

        module = self.model.get_submodule(name)
        names = [f"{name}.{n}" for n, p in module.named_parameters() if p.device.type == "meta"]
        try:
            for full in names:
                set_module_tensor_to_device(self.model, full, device, value=self._weights[full])
            yield module
        finally:
            for full in names:
                set_module_tensor_to_device(self.model, full, "meta")
            if device.type == "cuda":
                torch.cuda.empty_cache()


def offloaded_weights(model: nn.Module) -> Mapping[str, torch.Tensor]:
    """accelerate's reader of the offloaded tensors (`OffloadedWeightsLoader`, keyed by full
    tensor name), as the hooks transformers attached hold it."""
    for module in model.modules():
        hook = getattr(module, "_hf_hook", None)
        weights = getattr(hook, "weights_map", None)
        if weights is not None:
            return getattr(weights, "dataset", weights)
    raise RuntimeError("the model has no offloaded weights")


def device_map(
    skeleton: nn.Module, blocks: DecoderBlocks, device: torch.device, offload_embeddings: bool = False
) -> dict[str, str]:
    """A complete device map of `skeleton` (a meta-device copy of the model, as transformers
    builds it for this checkpoint): each block and an untied output head on disk; with
    `offload_embeddings` the input embeddings and any head too (a model that only runs whole
    forward passes needs them only while they run); every other module, and any tensor held
    directly by an ancestor of an offloaded module, on `device`."""
    resident = "cpu" if device.type == "cpu" else str(device if device.index is not None else torch.device("cuda", 0))
    offloaded = {f"{blocks.path}.{i}" for i in range(len(blocks.blocks))}
    head = skeleton.get_output_embeddings() if callable(getattr(skeleton, "get_output_embeddings", None)) else None
    head_name = next((name for name, module in skeleton.named_modules() if module is head), None)
    # transformers' own list of tied tensors (target -> source): a tied head shares the
    # resident embeddings' tensor, so it stays resident too
    tied = getattr(skeleton, "all_tied_weights_keys", None) or {}
    tied_names = {*tied.keys(), *tied.values()}
    if head_name and (offload_embeddings or not any(n.startswith(head_name + ".") for n in tied_names)):
        offloaded.add(head_name)
    if offload_embeddings and callable(getattr(skeleton, "get_input_embeddings", None)):
        embeddings = skeleton.get_input_embeddings()
        offloaded |= {name for name, module in skeleton.named_modules() if module is embeddings}
    mapping: dict[str, str] = {}

    def visit(prefix: str, module: nn.Module) -> None:
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if tensor is not None:
                mapping[prefix + name] = resident
        for name, child in module.named_children():
            full = prefix + name
            if full in offloaded:
                mapping[full] = DISK
            elif any(o.startswith(full + ".") for o in offloaded):
                visit(full + ".", child)
            else:
                mapping[full] = resident

    visit("", skeleton)
    return mapping


def load_streamed(
    model_path: str,
    auto_class: type,
    dtype: torch.dtype,
    device: torch.device,
    offload_folder: str | Path,
    trust_remote_code: bool = False,
    offload_embeddings: bool = False,
) -> StreamedModel:
    """Load `model_path` with its decoder blocks (and untied head; with `offload_embeddings`
    the embeddings too) left in the checkpoint.

    `offload_folder` (empty, temporary) receives only what cannot be read from the
    checkpoint as it is stored; its size is noted when anything was written there.
    """
    from quailora_core.model.info import load_model_config, meta_model

    hf_config = load_model_config(model_path, trust_remote_code)
    skeleton = meta_model(hf_config, trust_remote_code)
    mapping = device_map(skeleton, find_decoder_blocks(skeleton), device, offload_embeddings)
    del skeleton
    model, info = auto_class.from_pretrained(
        model_path,
        dtype=dtype,
        device_map=mapping,
        offload_folder=str(offload_folder),
        trust_remote_code=trust_remote_code,
        output_loading_info=True,
    )
    model.eval()
    model.config.use_cache = False
    notes = []
    copied = sum(f.stat().st_size for f in Path(offload_folder).rglob("*") if f.is_file())
    if copied:
        notes.append(
            f"{size_text(copied)} of weights were copied to a temporary folder to be read block by block "
            "(a .bin checkpoint, or weights transformers converts while loading); a safetensors checkpoint "
            "is read in place"
        )
    if not any(Path(model_path).glob("*.safetensors")) and Path(model_path).is_dir():
        notes.append(
            "this checkpoint has no safetensors files: loading a .bin checkpoint needs memory for its whole "
            "state dict; load it once and save_pretrained() it again (transformers writes safetensors) for a flat "
            "memory profile"
        )
    return StreamedModel(model, find_decoder_blocks(model), info, notes)
