"""Which layers get a LoRA pair, and which of them get a quantized weight Q: asked of the
libraries that decide it at training time.

Two libraries decide what a QLoRA run really does to a model, and every hand-written copy
of their rules has drifted on some family:

- transformers' bitsandbytes quantizer decides at load time which modules become 4- or
  8-bit layers (it converts exactly `nn.Linear` and its own `Conv1D`, and skips the
  output head, tied weights, `_keep_in_fp32_modules` and `llm_int8_skip_modules`):
  Falcon's `FalconLinear` subclass, for one, stays in full precision;
- peft decides which modules a `LoraConfig` wraps (`all-linear` leaves the head out,
  a name matches a path suffix, some model types get special handling).

`plan_targets` applies both to the model skeleton on the meta device (no weights, a
fraction of a second), in the order a training run applies them, quantize then wrap, and
reads the answer off the result. The engine initializes exactly the planned layers, with
Q from bitsandbytes for the quantized ones and Q = W (no error, a plain LoRA start) for
the rest, and the adapter names them by full path, so training wraps the same layers.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PretrainedConfig

from quailora_core.config import LoraSettings, QuantConfig
from quailora_core.errors import InputError
from quailora_core.model.blocks import find_decoder_blocks
from quailora_core.model.target_names import ALL_LINEAR, matches


@dataclass(frozen=True)
class Target:
    """One layer that gets a LoRA pair."""

    name: str  # full module path, as peft and the adapter name it
    block: int  # index of its decoder block
    sub: str  # path inside the block (`self_attn.q_proj`)
    out_features: int
    in_features: int
    kind: str  # class of the full-precision module (Linear, Conv1D, FalconLinear, ...)
    quantized: bool  # transformers turns it into a bitsandbytes layer when the run loads the base

    @property
    def transposed(self) -> bool:
        """transformers' Conv1D (GPT-2 style) stores its weight as (in, out)."""
        return self.kind == "Conv1D"


@dataclass
class TargetPlan:
    blocks_path: str  # e.g. "model.layers", "model.language_model.layers", "transformer.h"
    n_blocks: int
    targets: list[Target]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (layer, why all-linear leaves it out)
    notes: list[str] = field(default_factory=list)  # what the user should know before the run
    # quantized layers inside the blocks that get no LoRA: the quantized model runs them
    # with Q, so the quantized-path inputs (propagated, asymmetric) must too
    frozen: list[Target] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.targets]

    def by_block(self, which: str = "targets") -> dict[int, list[Target]]:
        out: dict[int, list[Target]] = {}
        for t in getattr(self, which):
            out.setdefault(t.block, []).append(t)
        return out


def module_weight(module: nn.Module, target: Target) -> torch.Tensor:
    """The layer's weight in PyTorch's (out, in) layout (a view for Conv1D)."""
    return module.weight.data.T if target.transposed else module.weight.data


def set_module_weight(module: nn.Module, target: Target, weight: torch.Tensor) -> None:
    module.weight.data = weight.T.contiguous() if target.transposed else weight


@contextlib.contextmanager
def _quiet_transformers():
    """transformers logs a misleading "loading your model using eetq" warning when nothing
    is converted; the plan reports that itself, in words that fit."""
    from transformers.utils import logging as tf_logging

    old = tf_logging.get_verbosity()
    tf_logging.set_verbosity_error()
    try:
        yield
    finally:
        tf_logging.set_verbosity(old)


def linear_leaves(model: nn.Module) -> dict[str, tuple[str, int, int]]:
    """name -> (class name, out, in) of every linear-like leaf, before quantization."""
    from transformers.pytorch_utils import Conv1D

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, Conv1D):
            rows, cols = module.weight.shape  # (in, out)
            out[name] = (type(module).__name__, int(cols), int(rows))
        elif isinstance(module, nn.Linear):
            out[name] = (type(module).__name__, module.out_features, module.in_features)
    return out


def expert_count(hf_config: PretrainedConfig) -> int | None:
    """Routed experts per MoE block from the model's config, or None for a dense model."""
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    for key in ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"):
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 1:
            return value
    return None


def quantized_linears(skeleton: nn.Module, quant: QuantConfig, load_dtype: torch.dtype) -> set[str]:
    """The names of the modules bitsandbytes quantizes when transformers loads the model with
    `quant`, asked of transformers' own quantizer on `skeleton` (a meta-device model, changed
    in place: those modules become bitsandbytes layers)."""
    import bitsandbytes as bnb
    from transformers.quantizers import AutoHfQuantizer

    from quailora_core.quant.quantizer import bnb_config

    quantizer = AutoHfQuantizer.from_config(bnb_config(quant, load_dtype), pre_quantized=False)
    with _quiet_transformers():
        quantizer.preprocess_model(
            model=skeleton, dtype=load_dtype, device_map={"": "cpu"}, checkpoint_files=None, use_kernels=False
        )
    return {n for n, m in skeleton.named_modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))}


def plan_targets(
    skeleton: nn.Module,
    hf_config: PretrainedConfig,
    lora: LoraSettings,
    quant: QuantConfig,
    load_dtype: torch.dtype,
) -> TargetPlan:
    """The layers a run initializes, from transformers' quantizer and peft applied to
    `skeleton` (the model on the meta device, `model.info.meta_model`; used up: it is
    quantized and wrapped in place).

    Raises InputError (before any weight loads) when nothing matches, when a named target
    cannot hold the rank, or when transformers would quantize none of the targets (there
    is then no quantization error to initialize for).
    """
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer


    blocks = find_decoder_blocks(skeleton)
    kinds = linear_leaves(skeleton)
    block_of = {id(m): b for b, block in enumerate(blocks.blocks) for m in block.modules()}
    block_names = {name: block_of[id(m)] for name, m in skeleton.named_modules() if id(m) in block_of}
    n_experts = expert_count(hf_config)
    experts = _fused_expert_parameters(blocks, n_experts)

    quantized = quantized_linears(skeleton, quant, load_dtype)

    requested = [t.strip() for t in lora.targets if t.strip()]
    all_linear = requested == [ALL_LINEAR]
    spec: str | list[str] = ALL_LINEAR if all_linear else requested
    try:
        with _quiet_transformers(), _quiet_warnings():
            wrapped_model = get_peft_model(skeleton, LoraConfig(r=lora.rank, target_modules=spec))
    except ValueError as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "not found in the base model" in text or "No modules were targeted" in text:
            raise _no_match(requested, kinds, block_names) from None
        raise InputError(
            f"peft refuses these targets: {text.removeprefix('[PEFT:PeftType.LORA] ')}",
            f"Name the layers to adapt with --targets (linear layers in each block: "
            f"{', '.join(_block_linear_names(kinds, block_names))}).",
            field="lora.targets",
        ) from None
    wrapped = [
        (name.removeprefix("base_model.model."), module)
        for name, module in wrapped_model.named_modules()
        if isinstance(module, LoraLayer) and name.startswith("base_model.model.")
    ]

    targets: list[Target] = []
    skipped: list[tuple[str, str]] = []
    outside: list[str] = []
    unsupported: list[tuple[str, str]] = []
    for name, _module in wrapped:
        if name not in kinds:
            unsupported.append((name, type(_module.get_base_layer()).__name__))
            continue
        kind, n_out, n_in = kinds[name]
        if name not in block_names:
            outside.append(name)
            continue
        b = block_names[name]
        sub = name.removeprefix(f"{blocks.path}.{b}.")
        if all_linear and n_out == 1:
            skipped.append((name, "a scalar gate (1 output) cannot hold a LoRA of rank above 1"))
            continue
        if all_linear and n_experts is not None and n_out == n_experts:
            skipped.append((name, f"MoE router ({n_out} experts): routing stays as pretrained"))
            continue
        targets.append(Target(name, b, sub, n_out, n_in, kind, name in quantized))

    if unsupported and not all_linear:
        name, kind = unsupported[0]
        raise InputError(
            f"Target {name.split('.')[-1]!r} is a {kind}, not a linear layer.",
            "QuAILoRA initializes Linear (and GPT-2 style Conv1D) layers only; choose other --targets.",
            field="lora.targets",
        )
    if not all_linear:
        for t in requested:
            if not any(matches(t, x.name) for x in targets):
                raise _no_match([t], kinds, block_names)
    if not targets:
        if all_linear:
            raise InputError(
                "The decoder blocks of this model hold no linear layers that peft can wrap.",
                "QuAILoRA initializes Linear layers only.",
                field="model.path",
            )
        raise _no_match(requested, kinds, block_names)
    smallest = min(targets, key=lambda x: min(x.out_features, x.in_features))
    if lora.rank > min(smallest.out_features, smallest.in_features):
        width = min(smallest.out_features, smallest.in_features)
        raise InputError(
            f"rank {lora.rank} is larger than the smallest target dimension ({width}, in {smallest.name}).",
            f"Use --rank {width} or less, or leave {smallest.sub.split('.')[-1]} out of --targets.",
            field="lora.rank",
        )
    if not any(t.quantized for t in targets):
        classes = sorted({t.kind for t in targets})
        raise InputError(
            f"transformers keeps every target of this model in full precision when it loads it in "
            f"{quant.bits} bit (it converts nn.Linear and Conv1D; these are {', '.join(classes)}).",
            "There is no quantization error to initialize for: train a plain LoRA, or choose other --targets.",
            field="model.path",
        )

    notes = []
    plain = [t for t in targets if not t.quantized]
    if plain:
        classes = sorted({t.kind for t in plain})
        notes.append(
            f"{len(plain)} of {len(targets)} targets stay in full precision when transformers loads the model in "
            f"{quant.bits} bit ({', '.join(classes)}; e.g. {plain[0].name}): they get no quantization error to "
            "correct and start as plain LoRA (B = 0)."
        )
    if outside:
        notes.append(
            f"{len(outside)} layers outside the language model's decoder blocks are left untouched "
            f"(e.g. {outside[0]}): the adapter covers {blocks.path} only."
        )
    wrapped_names = {w for w, _ in wrapped}
    unwrapped = sorted({n.split(".")[-1] for n in kinds if n in block_names and n not in wrapped_names})
    if all_linear and unwrapped:
        notes.append(
            f"peft's all-linear does not wrap {', '.join(unwrapped)} in this model type; name them in --targets "
            "to adapt them too."
        )
    if skipped:
        kinds_skipped = sorted({n.split(".")[-1] for n, _ in skipped})
        notes.append(f"all-linear leaves out {len(skipped)} layers ({', '.join(kinds_skipped)}): {skipped[0][1]}.")
    if experts:
        count, names = experts
        dtype = str(load_dtype).removeprefix("torch.")
        notes.append(
            f"The experts of {count} MoE blocks ({', '.join(names)}) are fused 3-D parameters: bitsandbytes does "
            f"not quantize them and peft's all-linear does not wrap them; they stay in the load dtype ({dtype})."
        )
    chosen = {t.name for t in targets}
    frozen = []
    for name in sorted(quantized - chosen):
        if name in block_names and name in kinds:
            kind, n_out, n_in = kinds[name]
            b = block_names[name]
            frozen.append(Target(name, b, name.removeprefix(f"{blocks.path}.{b}."), n_out, n_in, kind, True))
    return TargetPlan(blocks.path, len(blocks.blocks), targets, skipped, notes, frozen)


def _fused_expert_parameters(blocks, n_experts: int | None) -> tuple[int, list[str]] | None:
    """(blocks with fused expert weights, their parameter names), or None: 3-D parameters
    whose first axis runs over the config's experts."""
    if n_experts is None:
        return None
    count, names = 0, []
    for block in blocks.blocks:
        found = [n for n, p in block.named_parameters() if p.dim() == 3 and p.shape[0] == n_experts]
        if found:
            count += 1
            for n in found:
                leaf = n.split(".")[-1]
                if leaf not in names:
                    names.append(leaf)
    return (count, names) if count else None


@contextlib.contextmanager
def _quiet_warnings():
    import warnings

    logger = logging.getLogger("peft")
    level = logger.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            logger.setLevel(level)


def _block_linear_names(kinds: dict[str, tuple[str, int, int]], block_names: dict[str, int]) -> list[str]:
    return sorted({n.split(".")[-1] for n in kinds if n in block_names})


def _no_match(requested: list[str], kinds: dict[str, tuple[str, int, int]], block_names: dict[str, int]) -> InputError:
    names = _block_linear_names(kinds, block_names)
    return InputError(
        f"No layer matches the targets {', '.join(requested)}."
        if len(requested) > 1
        else f"Target {requested[0]!r} matches no layer.",
        f"Linear layers in each block: {', '.join(names) or 'none'}.",
        field="lora.targets",
    )

