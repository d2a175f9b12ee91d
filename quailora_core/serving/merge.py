"""Merge an adapter into a plain 16-bit model for serving: dequant(Q) + s·B·A, never W + s·B·A.

A QuAILoRA adapter is computed so that Q + s·B·A ≈ W, where Q is the weight bitsandbytes
builds from W for the quantizer the adapter records; fine-tuning moves B·A on from there.
The usual merge (peft's `merge_and_unload` on the 16-bit base) adds the adapter to W, which
already holds the correction: the quantization error would be corrected twice. So the
merged model's targeted weights are dequant(Q) + s·B·A with Q exactly as bitsandbytes
builds it (`quant.quantizer`), the other weights bitsandbytes quantizes are dequant(Q) (the
model that was trained computed with them), and every other tensor is the base
checkpoint's, under the checkpoint's own key names.

What is asked of the libraries, not re-derived: which checkpoint key a loaded weight comes
from (transformers' offload index of the streamed model: it renames keys while loading),
the LoRA delta with its scaling, rank/alpha patterns, rsLoRA and fan_in_fan_out (peft's own
`get_delta_weight` on the adapter loaded by `PeftModel.from_pretrained` onto a meta-device
skeleton), and which targets are quantized at all (the adapter's record, which asked
transformers when the adapter was made).

Host memory stays flat: decoder blocks are read from the checkpoint one at a time
(`model.streamed`), the other tensors one by one, and safetensors shards are written as
they fill. The folder is written into a temporary sibling and renamed into place only
after a self-check: for a few targeted layers the written tensor is read back and compared
with Q rebuilt through bitsandbytes' own module (`Params4bit` / `Int8Params`, as
transformers builds them) from the checkpoint tensor, plus peft's delta.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from quailora_core.adapter.record import AdapterRecord
from quailora_core.errors import Cancelled, EngineError, InputError
from quailora_core.events import CancelToken, EventCallback, Finished, Log, Progress, Stage, ignore_events
from quailora_core.files import atomic_dir, check_output_dir
from quailora_core.model.streamed import load_streamed, offloaded_weights

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEFAULT_SHARD_BYTES = 2 * 2**30
ADAPTER_NAME = "default"  # the name PeftModel.from_pretrained gives the loaded adapter
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# LoraConfig fields of peft variants whose merged weight is not W_base + get_delta_weight:
# refused rather than merged wrong (the first truthy one is named)
UNSUPPORTED = {
    "use_dora": "DoRA (use_dora)",
    "lora_bias": "a LoRA bias (lora_bias)",
    "use_qalora": "QA-LoRA (use_qalora)",
    "layer_replication": "layer replication",
    "target_parameters": "LoRA on parameters (target_parameters)",
    "modules_to_save": "fully trained modules (modules_to_save)",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "megatron_config": "Megatron parallel layers (megatron_config)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "arrow_config": "Arrow routing (arrow_config)",
}
_ADAPTER_HINT = "Give --adapter a folder written by `quailora init` or the adapter/ folder of `quailora train`."


@dataclass(frozen=True)
class MergePlan:
    """What the cheap checks found: everything the merge needs, nothing loaded yet."""

    adapter: Path
    output: Path
    base: str  # the local base model folder
    dtype: torch.dtype
    record: AdapterRecord
    lora_config: Any  # peft's LoraConfig of the adapter
    checkpoint: dict[str, str]  # checkpoint key -> shard file name, in the checkpoint's order


@dataclass(frozen=True)
class MergeResult:
    output_dir: str
    base: str
    dtype: str
    merged_layers: int
    tensors: int
    shards: int
    checked: list[str] = field(default_factory=list)  # the layers the self-check recomputed
    auto_class: str = "AutoModelForCausalLM"  # what loads it (vision-language: AutoModelForImageTextToText)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------- cheap checks
def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise InputError(f"Unknown --dtype {name!r}.", f"Use one of {', '.join(DTYPES)}.", field="dtype")
    return DTYPES[name]


def checkpoint_keys(folder: Path) -> dict[str, str]:
    """The base checkpoint's tensors (key -> file) as its own files list them; a checkpoint
    without safetensors files is refused (its keys cannot be read without loading it whole)."""
    index = folder / INDEX_FILE
    if index.is_file():
        return dict(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
    if (folder / SINGLE_FILE).is_file():
        from safetensors import safe_open

        with safe_open(str(folder / SINGLE_FILE), framework="pt") as f:
            return dict.fromkeys(f.keys(), SINGLE_FILE)
    raise InputError(
        f"Base model {str(folder)!r} has no safetensors checkpoint.",
        "Load it once and save_pretrained() it again (transformers writes safetensors), then merge from that folder.",
        field="model",
    )


def plan_merge(adapter: str, output: str, dtype: str = "bf16", model: str | None = None) -> MergePlan:
    """Every check that needs no weights: the adapter and its record, peft variants we do not
    merge, the quantizer, the base against the recorded fingerprint, the output folder."""
    from peft import PeftConfig, PeftType

    from quailora_core.model.fingerprint import check_base
    from quailora_core.model.info import resolve_model_path

    out_dtype = parse_dtype(dtype)
    if not output:
        raise InputError("No output folder given.", "Use --output PATH.", field="output")
    try:
        check_output_dir(output, overwrite=False)
    except InputError as exc:  # merge never replaces a folder: say so, not --overwrite
        raise InputError(exc.message, "Choose another --output (an empty or new folder).", field="output") from None
    record = AdapterRecord.load(adapter)
    if not (Path(adapter) / "adapter_model.safetensors").is_file():
        raise InputError(f"{adapter!r} has no adapter_model.safetensors.", _ADAPTER_HINT, field="adapter")
    config = PeftConfig.from_pretrained(adapter)
    if config.peft_type != PeftType.LORA:
        raise InputError(f"Adapter {adapter!r} is a {config.peft_type} adapter, not LoRA.", _ADAPTER_HINT, field="adapter")
    for name, label in UNSUPPORTED.items():
        if getattr(config, name, None):
            raise InputError(
                f"Adapter {adapter!r} uses {label}, which `quailora merge` does not support.",
                "Merge plain LoRA adapters (what `quailora init` and `quailora train` write).",
                field="adapter",
            )
    q = record.quantization
    if q.bits not in (4, 8) or q.load_dtype not in ("float32", "bfloat16", "float16"):
        raise InputError(
            f"Adapter {adapter!r} records a quantizer this QuAILoRA cannot reproduce ({q.bits} bit, load dtype "
            f"{q.load_dtype!r}).",
            "Merge with the QuAILoRA version that wrote it.",
            field="adapter",
        )
    if not record.targets:
        raise InputError(f"Adapter {adapter!r} records no targeted layers.", _ADAPTER_HINT, field="adapter")
    base = resolve_model_path(model or record.base_model.path)
    if not Path(base).is_dir():
        raise InputError(f"Base model {base!r} is not a local folder.", "Download it and pass --model FOLDER.",
                         field="model")  # fmt: skip
    warnings = check_base(base, record, adapter)
    if warnings:  # a base that cannot be checked would be merged silently wrong
        raise InputError(f"Cannot check base {base!r} against the adapter: {warnings[0]}.",
                         "Pass --model with the base folder the adapter was initialized on.", field="model")  # fmt: skip
    refuse_inside(output, {"adapter": adapter, "base model": base}, "--output")
    return MergePlan(Path(adapter), Path(output).expanduser(), base, out_dtype, record, config,
                     checkpoint_keys(Path(base)))  # fmt: skip


def refuse_inside(path: str, folders: dict[str, str], flag: str) -> None:
    """InputError when `path` is one of `folders` (label -> folder) or lies inside one: a merge
    writes beside its inputs, never into them."""
    where = Path(path).expanduser().resolve()
    for label, folder in folders.items():
        inside = Path(folder).expanduser().resolve()
        if where == inside or inside in where.parents:
            raise InputError(f"{path!r} lies inside the {label} folder {str(inside)!r}.",
                             f"Choose a {flag} outside it.", field="output")  # fmt: skip


# ---------------------------------------------------------------------------- the merge
def merge_adapter(
    adapter: str,
    output: str,
    dtype: str = "bf16",
    model: str | None = None,
    on_event: EventCallback = ignore_events,
    cancel: CancelToken | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    check_layers: int = 3,
) -> MergeResult:
    """Write the merged model folder `output` (see the module docstring); returns what was
    written. Bad input raises InputError before anything loads; a failed self-check raises
    EngineError and leaves nothing."""
    plan = plan_merge(adapter, output, dtype, model)
    cancel = cancel or CancelToken()
    on_event(Stage("load"))
    deltas = lora_layers(plan)
    untargeted = quantized_untargeted(plan)
    with (  # atomic_dir first: it makes the output's parent, where the offload folder goes
        atomic_dir(plan.output, overwrite=False) as tmp,
        tempfile.TemporaryDirectory(prefix=".quailora-merge-offload-", dir=plan.output.parent) as offload,
    ):
        streamed = load_streamed(plan.base, _auto_class(plan.record), plan.record.quantization.dtype(),
                                 torch.device("cpu"), offload, offload_embeddings=True)  # fmt: skip
        streamed.detach_blocks()
        keys = _key_plan(plan, streamed, deltas, untargeted)
        if keys.kept:
            on_event(Log("warning", f"{len(keys.kept)} layers bitsandbytes quantizes carry no LoRA and lie outside the "
                                    f"decoder blocks ({', '.join(keys.kept[:3])}{', ...' if len(keys.kept) > 3 else ''})"
                                    ": they are written as the base's full-precision weights, so the merged model "
                                    "differs from the 4-bit model there."))  # fmt: skip
        writer = ShardWriter(tmp, max_shard_bytes)
        reader = CheckpointReader(Path(plan.base), plan.checkpoint)
        n = len(streamed.blocks.blocks)
        on_event(Stage("merge", n))
        for b in range(n):
            if cancel.cancelled:
                raise Cancelled()
            with streamed.block_weights(b, torch.device("cpu")):
                for key in keys.blocks[b]:
                    target = keys.targets.get(key)
                    if key in keys.quantized:  # no LoRA, but 4-bit in the model that was trained
                        weight = streamed.model.get_parameter(f"{keys.quantized[key]}.weight")
                        writer.add(key, dequantized_weight(weight, plan))
                    elif target is None:
                        writer.add(key, _cast(reader.get(key), plan.dtype))
                    else:
                        weight = streamed.model.get_parameter(f"{target}.weight")
                        writer.add(key, merged_weight(weight, target, plan, deltas[target]))
                on_event(Progress(b + 1, n, f"block {b + 1} of {n} merged"))
        on_event(Stage("copy", len(keys.rest)))
        for key in keys.rest:
            writer.add(key, _cast(reader.get(key), plan.dtype))
        shards = writer.close()
        _write_configs(plan, tmp, on_event)
        on_event(Stage("verify"))
        checked = self_check(plan, tmp, keys, deltas, reader, check_layers)
        on_event(Log("info", f"self-check: {len(checked)} merged layers equal dequant(Q) from bitsandbytes' own "
                             "module + peft's delta, to the bit"))  # fmt: skip
    result = MergeResult(str(plan.output.resolve()), plan.base, str(plan.dtype).removeprefix("torch."),
                         len(keys.targets), len(plan.checkpoint), shards, checked,
                         plan.record.base_model.auto_class)  # fmt: skip
    on_event(Finished(result.output_dir, result.to_dict()))
    return result


def _auto_class(record: AdapterRecord) -> type:
    from quailora_core.model.base import auto_class

    return auto_class(record)


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def quantized_untargeted(plan: MergePlan) -> set[str]:
    """The modules bitsandbytes quantizes for the adapter's settings (asked of transformers'
    quantizer on a meta-device skeleton) that carry no LoRA: the model that was trained and
    evaluated computed with dequant(Q) there, so the merge writes dequant(Q) too."""
    from quailora_core.model.info import load_model_config, meta_model
    from quailora_core.model.targets import quantized_linears

    q = plan.record.quantization
    skeleton = meta_model(load_model_config(plan.base))
    return quantized_linears(skeleton, q.config(), q.dtype()) - set(plan.record.targets)


def dequantized_weight(weight: torch.Tensor, plan: MergePlan) -> torch.Tensor:
    """dequant(Q) of an untargeted weight, exactly as bitsandbytes builds Q, in the output dtype."""
    from quailora_core.quant.quantizer import quantize_dequantize

    q = plan.record.quantization
    return quantize_dequantize(weight.detach().to(q.dtype()), q.config()).to(plan.dtype)


def merged_weight(weight: torch.Tensor, target: str, plan: MergePlan, layer: Any) -> torch.Tensor:
    """dequant(Q) + delta for a quantized target (W + delta for one transformers keeps in full
    precision), in the output dtype; the sum is formed in float32."""
    from quailora_core.quant.quantizer import quantize_dequantize

    q = plan.record.quantization
    w = weight.detach().to(q.dtype())
    base = w if target in plan.record.full_precision_targets else quantize_dequantize(w, q.config())
    delta = layer.get_delta_weight(ADAPTER_NAME)
    if delta.shape != base.shape:
        raise EngineError(f"peft's delta for {target} has shape {tuple(delta.shape)}, the weight {tuple(base.shape)}.")
    return (base.float() + delta.float()).to(plan.dtype)


def lora_layers(plan: MergePlan) -> dict[str, Any]:
    """Target name -> peft's LoraLayer holding the adapter's real A and B, loaded by
    `PeftModel.from_pretrained` (as training loads it) onto a meta-device skeleton of the
    base: peft decides the per-layer rank, alpha, scaling and layout, and wraps exactly the
    recorded targets or the merge is refused."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    from quailora_core.model.info import load_model_config, meta_model

    skeleton = meta_model(load_model_config(plan.base))
    for target in plan.record.targets:
        # peft moves loaded LoRA weights to the device and float dtype of the base layer: a
        # meta weight would lose them, so each target gets a float32 CPU weight of its shape
        # that owns no memory (one element, expanded)
        module = skeleton.get_submodule(target) if _has_module(skeleton, target) else None
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            module.weight = torch.nn.Parameter(torch.zeros((), dtype=torch.float32).expand(weight.shape),
                                               requires_grad=False)  # fmt: skip
    peft_model = PeftModel.from_pretrained(skeleton, str(plan.adapter), low_cpu_mem_usage=True)
    layers = {name: m for name, m in peft_model.base_model.model.named_modules() if isinstance(m, LoraLayer)}
    if set(layers) != set(plan.record.targets):
        extra, missing = sorted(set(layers) - set(plan.record.targets)), sorted(set(plan.record.targets) - set(layers))
        raise InputError(
            f"peft wraps other layers than adapter {str(plan.adapter)!r} records (peft only: {extra[:3]}, record only: "
            f"{missing[:3]}).",
            _ADAPTER_HINT,
            field="adapter",
        )
    for name, layer in layers.items():
        if ADAPTER_NAME not in layer.lora_A or layer.lora_A[ADAPTER_NAME].weight.device.type == "meta" \
                or layer.lora_B[ADAPTER_NAME].weight.device.type == "meta":  # fmt: skip
            raise InputError(f"Adapter {str(plan.adapter)!r} holds no LoRA weights for {name}.", _ADAPTER_HINT,
                             field="adapter")  # fmt: skip
        if getattr(layer, "use_dora", {}).get(ADAPTER_NAME):
            raise InputError(f"Adapter {str(plan.adapter)!r} uses DoRA on {name}, which merge does not support.",
                             "Merge plain LoRA adapters.", field="adapter")  # fmt: skip
    return layers


@dataclass
class KeyPlan:
    """Which checkpoint keys are written with which block, which are targets, which are copied."""

    blocks: list[list[str]]  # per decoder block, its checkpoint keys
    rest: list[str]  # every other checkpoint key (embeddings, norms, head, vision tower)
    targets: dict[str, str]  # checkpoint key of a targeted weight -> the target's module name
    quantized: dict[str, str] = field(default_factory=dict)  # key of an untargeted weight bnb quantizes -> module
    kept: list[str] = field(default_factory=list)  # untargeted quantized modules written as W (outside the blocks)


def _key_plan(plan: MergePlan, streamed: Any, deltas: dict[str, Any], untargeted: set[str]) -> KeyPlan:
    """Map the loaded model's tensor names to the checkpoint's keys with transformers' own
    answer: the offload index it built while loading (loaded name -> file and source key).
    `untargeted`: the modules bitsandbytes quantizes that carry no LoRA."""
    folder = Path(plan.base).resolve()
    files = {str((folder / f).resolve()) for f in set(plan.checkpoint.values())}
    index = offloaded_weights(streamed.model).index
    prefix = streamed.blocks.path
    order = {k: i for i, k in enumerate(plan.checkpoint)}
    blocks: list[list[str]] = [[] for _ in streamed.blocks.blocks]
    for name, entry in index.items():
        parts = name.removeprefix(prefix + ".").split(".", 1)
        source = entry.get("weight_name", name)
        in_checkpoint = str(Path(entry.get("safetensors_file") or "").resolve()) in files and source in plan.checkpoint
        if name.startswith(prefix + ".") and parts[0].isdigit() and in_checkpoint and source not in blocks[int(parts[0])]:
            blocks[int(parts[0])].append(source)  # once, though tied names may share a source
    targets: dict[str, str] = {}
    for target in deltas:
        entry = index.get(f"{target}.weight")
        source = (entry or {}).get("weight_name")
        block = target.removeprefix(prefix + ".").split(".", 1)[0] if target.startswith(prefix + ".") else ""
        if entry is None or not block.isdigit() or source not in blocks[int(block)]:
            raise InputError(
                f"{target}.weight is not read from the checkpoint as it is stored (transformers converts it while "
                "loading, or it lies outside the decoder blocks): `quailora merge` cannot reproduce it.",
                "Merge adapters whose targets are plain linear layers of the decoder blocks.",
                field="adapter",
            )
        targets[source] = target
    quantized: dict[str, str] = {}
    kept: list[str] = []
    for module in sorted(untargeted):
        source = (index.get(f"{module}.weight") or {}).get("weight_name")
        block = module.removeprefix(prefix + ".").split(".", 1)[0] if module.startswith(prefix + ".") else ""
        if source is not None and block.isdigit() and source in blocks[int(block)]:
            quantized[source] = module
        else:
            kept.append(module)
    seen = {k for keys in blocks for k in keys}
    for keys in blocks:
        keys.sort(key=order.__getitem__)
    rest = [k for k in plan.checkpoint if k not in seen]
    return KeyPlan(blocks, rest, targets, quantized, kept)


# ---------------------------------------------------------------------------- files
class CheckpointReader:
    """One tensor at a time from the base checkpoint's own shards, by its own key."""

    def __init__(self, folder: Path, weight_map: dict[str, str]) -> None:
        self.folder, self.weight_map = folder, weight_map

    def get(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.folder / self.weight_map[key]), framework="pt") as f:
            return f.get_tensor(key)


class ShardWriter:
    """safetensors shards written as they fill (at most `max_bytes` held), then named as
    transformers names them, with `model.safetensors.index.json` when there are several."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder, self.max_bytes = folder, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.parts: list[tuple[Path, list[str]]] = []
        self.total = 0

    def add(self, key: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self._flush()
        self.pending[key] = tensor.detach().contiguous().clone()  # no view into a checkpoint's memory map
        self.pending_bytes += size
        self.total += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        path = self.folder / f".part-{len(self.parts):05d}.safetensors"
        save_file(self.pending, str(path), metadata={"format": "pt"})
        self.parts.append((path, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> int:
        """Write what is left, name the shards, write the index; returns the number of shards."""
        if self.pending or not self.parts:
            self._flush()
        n = len(self.parts)
        if n == 1:
            self.parts[0][0].rename(self.folder / SINGLE_FILE)
            return 1
        weight_map = {}
        for i, (path, keys) in enumerate(self.parts):
            name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            path.rename(self.folder / name)
            weight_map.update(dict.fromkeys(keys, name))
        index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
        (self.folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return n


def written_tensors(folder: Path) -> dict[str, str]:
    """Key -> file of a merged folder (the index, or the single file's keys)."""
    return checkpoint_keys(folder)


def merged_config(base: str, dtype: torch.dtype) -> Any:
    """The config a merged folder holds: the base's, without quantization_config, in `dtype`."""
    from quailora_core.model.info import load_model_config

    config = load_model_config(base)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    return config


def _write_configs(plan: MergePlan, tmp: Path, on_event: EventCallback) -> None:
    """The base's config without quantization_config and with the chosen dtype, its
    generation config and its tokenizer, each saved by transformers itself."""
    from transformers import AutoTokenizer, GenerationConfig

    merged_config(plan.base, plan.dtype).save_pretrained(tmp)
    if (Path(plan.base) / "generation_config.json").is_file():
        GenerationConfig.from_pretrained(plan.base).save_pretrained(tmp)
    try:
        AutoTokenizer.from_pretrained(plan.base).save_pretrained(tmp)
    except (OSError, ValueError) as exc:
        on_event(Log("warning", f"the base's tokenizer was not copied: {str(exc).splitlines()[0]}"))


# ---------------------------------------------------------------------------- the self-check
def _sample(items: list[str], k: int) -> list[str]:
    if k <= 0 or len(items) <= k:
        return list(items)
    picks = {round(i * (len(items) - 1) / (k - 1)) for i in range(k)} if k > 1 else {0}
    return [items[i] for i in sorted(picks)]


def module_dequantized(weight: torch.Tensor, plan: MergePlan) -> torch.Tensor:
    """Q as bitsandbytes' own parameter class builds it when transformers loads the base
    (`Params4bit` / `Int8Params` moved to the device quantize), dequantized from its state."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    from quailora_core.quant.quantizer import _STORAGE

    q = plan.record.quantization
    w = weight.to(q.dtype())
    if q.bits == 4:
        p = bnb.nn.Params4bit(w, requires_grad=False, quant_type=q.quant_type, blocksize=q.blocksize,
                              compress_statistics=bool(q.double_quant),
                              quant_storage=_STORAGE[q.quant_storage or "uint8"]).to("cpu")  # fmt: skip
        return bnbf.dequantize_4bit(p.data, p.quant_state)
    p = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False).to("cpu")
    return bnbf.int8_vectorwise_dequant(p.data, p.SCB)


def self_check(plan: MergePlan, folder: Path, keys: KeyPlan, deltas: dict[str, Any], reader: CheckpointReader,
               count: int) -> list[str]:  # fmt: skip
    """The folder holds exactly the checkpoint's keys, and for `count` targeted layers (first,
    last, between) the written tensor equals dequant(Q) from bitsandbytes' module, built from
    the checkpoint tensor, plus peft's delta. Raises EngineError on any difference."""
    from safetensors import safe_open

    written = written_tensors(folder)
    if set(written) != set(plan.checkpoint):
        raise EngineError(
            f"The merged folder's tensors differ from the base checkpoint's ({len(written)} vs {len(plan.checkpoint)} "
            "keys); nothing was written.",
        )
    by_target = {t: k for k, t in keys.targets.items()}
    checked = []
    for target in _sample([t for t in plan.record.targets if t in by_target], count):
        key = by_target[target]
        w = reader.get(key)
        fp = target in plan.record.full_precision_targets
        base = w.to(plan.record.quantization.dtype()) if fp else module_dequantized(w, plan)
        expected = (base.float() + deltas[target].get_delta_weight(ADAPTER_NAME).float()).to(plan.dtype)
        with safe_open(str(folder / written[key]), framework="pt") as f:
            found = f.get_tensor(key)
        if found.dtype != plan.dtype or found.shape != expected.shape or not torch.equal(found, expected):
            diff = (found.float() - expected.float()).norm() / expected.float().norm() if found.shape == expected.shape else 1.0
            raise EngineError(
                f"Self-check failed: the merged {target} differs from dequant(Q) + s·B·A recomputed through "
                f"bitsandbytes' own module (relative difference {float(diff):.2e}); nothing was written.",
                "Report this with the adapter's quailora.json and the package versions.",
            )
        checked.append(target)
    for key in _sample(sorted(keys.quantized), 1):  # and one layer without a LoRA that bitsandbytes quantizes
        expected = module_dequantized(reader.get(key), plan).to(plan.dtype)
        with safe_open(str(folder / written[key]), framework="pt") as f:
            found = f.get_tensor(key)
        if found.dtype != plan.dtype or not torch.equal(found, expected):
            raise EngineError(
                f"Self-check failed: the merged {keys.quantized[key]} (no LoRA) differs from dequant(Q) recomputed "
                "through bitsandbytes' own module; nothing was written.",
                "Report this with the adapter's quailora.json and the package versions.",
            )
        checked.append(keys.quantized[key])
    return checked


def iter_merged(folder: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a merged folder, one at a time (for readers and tests)."""
    from safetensors import safe_open

    folder = Path(folder)
    for key, file in written_tensors(folder).items():
        with safe_open(str(folder / file), framework="pt") as f:
            yield key, f.get_tensor(key)


def _has_module(model: torch.nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def loading_code(folder: str, auto_class: str = "AutoModelForCausalLM") -> str:
    """Python that loads a merged folder for inference: plain transformers, nothing else."""
    return (
        f"from transformers import {auto_class}, AutoTokenizer\n\n"
        f"model = {auto_class}.from_pretrained({folder!r})\n"
        f"tokenizer = AutoTokenizer.from_pretrained({folder!r})\n"
    )
