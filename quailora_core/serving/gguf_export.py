"""Export a full-precision transformers model folder (a merged fine-tune) to one GGUF file.

Why: llama.cpp and the stacks built on it (ollama, LM Studio) serve GGUF files, not transformers
folders. Why here and not by hand: every name, key and format is asked of the `gguf` package, the
one llama.cpp itself ships: tensor names from its `TensorNameMap` for the architecture, metadata
through `GGUFWriter.add_*`, the vocabulary's merges and special tokens from `gguf.vocab.SpecialVocab`,
f16 / bf16 / q8_0 bytes from `gguf.quants`. What differs per family follows llama.cpp's reference
converter (convert_hf_to_gguf.py): Llama and Mistral write the GGUF `llama` architecture with the
query and key rows permuted for llama.cpp's rotary layout, Qwen2 (biases) and Qwen3 (q/k norms) their
own architectures unpermuted; 1-D tensors (norms, biases) stay float32; a tied head writes no
`output.weight`.

Tensors stream: the header lists every tensor from the checkpoint's safetensors metadata, then each
tensor is read, converted and written in turn, so one tensor is in memory at a time. The file is
written next to the target under a temporary name and renamed into place only after it has been
read back and checked (`_check`): every tensor's name, shape and type, the values of the
non-block tensors and of the first and last block against the source (through transformers' own
GGUF inverse transforms, q8_0 dequantized by `gguf.quants` within its rounding bound), and a
sample text tokenized by the tokenizer transformers rebuilds from the file against the source
tokenizer. Anything that disagrees fails the export and leaves nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quailora_core.errors import EngineError, InputError

# For an adapter card: why a GGUF LoRA on a re-quantized base does not carry the correction.
GGUF_NOTE = (
    "GGUF / llama.cpp: a QuAILoRA adapter is computed for the NF4/FP4 weight Q that bitsandbytes "
    "builds, so that Q + s*B*A reproduces the full-precision layer. llama.cpp re-quantizes the "
    "full-precision weight with its own schemes (Q4_K and friends), which give a different Q, so "
    "the adapter converted to a GGUF LoRA and applied to such a base no longer carries the "
    "correction. To serve with llama.cpp, merge the trained adapter into the full-precision base "
    "first (`quailora merge`), then export the merged model (`quailora export-gguf --type "
    "f16|bf16|q8_0`) and quantize that file further with llama.cpp if you must."
)

SAMPLE_TEXT = "QuAILoRA exports 1234 tokens: héllo wörld, naïve café!\n\tTabs, CAPS and 'quotes' don't break."


@dataclass(frozen=True)
class Family:
    """How one transformers architecture is written (after llama.cpp's converter for it)."""

    gguf_arch: str  # gguf.MODEL_ARCH member name
    rotary_permute: bool  # Llama-style q/k row permutation


# transformers architecture class -> how llama.cpp's convert_hf_to_gguf.py writes it
FAMILIES: dict[str, Family] = {
    "LlamaForCausalLM": Family("LLAMA", True),
    "MistralForCausalLM": Family("LLAMA", True),
    "Qwen2ForCausalLM": Family("QWEN2", False),
    "Qwen3ForCausalLM": Family("QWEN3", False),
}

# --type -> (gguf.GGMLQuantizationType name, gguf.LlamaFileType name)
TYPES: dict[str, tuple[str, str]] = {
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
}


@dataclass(frozen=True)
class GgufExport:
    """What an export wrote and how it was checked."""

    output: Path
    architecture: str  # transformers class
    gguf_architecture: str  # general.architecture
    type: str
    tensors: int
    bytes: int
    values_checked: int  # tensors whose values were compared with the source
    max_abs_error: float  # largest |gguf - source| over the checked tensors
    kept_f16: tuple[str, ...] = ()  # q8_0 only: 2-D tensors whose rows are not a multiple of 32
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output), "architecture": self.architecture,
            "gguf_architecture": self.gguf_architecture, "type": self.type, "tensors": self.tensors,
            "bytes": self.bytes, "values_checked": self.values_checked, "max_abs_error": self.max_abs_error,
            "kept_f16": list(self.kept_f16), "seconds": round(self.seconds, 2),
        }  # fmt: skip


@dataclass
class _Tensor:
    source: str  # checkpoint key
    name: str  # GGUF name
    shape: tuple[int, ...]  # torch order
    qtype: Any  # gguf.GGMLQuantizationType
    shard: Path
    block: int | None


@dataclass
class _Plan:
    model: Path
    output: Path
    type: str
    architecture: str
    family: Family
    config: Any
    tokenizer_pre: str
    tensors: list[_Tensor] = field(default_factory=list)


# ---------------------------------------------------------------------------- refusals, before any weight
def _refuse(message: str, hint: str, field_name: str) -> InputError:
    return InputError(message, hint, field=field_name)


def _check_type(type_: str) -> tuple[Any, Any]:
    import gguf
    import numpy as np

    if type_ not in TYPES:
        raise _refuse(f"GGUF type {type_!r} is not one this export writes.", f"Use --type {' | '.join(TYPES)}.", "type")
    qname, fname = TYPES[type_]
    qtype = gguf.GGMLQuantizationType[qname]
    try:  # ask the installed gguf whether it can write this type at all
        gguf.quants.quantize(np.zeros((1, 32), dtype=np.float32), qtype)
    except (NotImplementedError, gguf.QuantError) as exc:
        raise _refuse(f"The installed gguf package cannot write {qname} ({exc}).",
                      "Upgrade gguf (pip install -U gguf) or choose another --type.", "type") from exc  # fmt: skip
    return qtype, gguf.LlamaFileType[fname]


def _check_output(output: str) -> Path:
    if not output:
        raise _refuse("No output file given.", "Use --output FILE.gguf.", "output")
    path = Path(output).expanduser()
    if path.suffix != ".gguf":
        raise _refuse(f"Output {output!r} does not end in .gguf.", "Name the file FILE.gguf.", "output")
    if path.exists():
        raise _refuse(f"Output {output!r} already exists.", "Choose another --output or remove the file.", "output")
    if not path.parent.is_dir():
        raise _refuse(f"The folder of output {output!r} does not exist.", "Create it first or choose another --output.", "output")
    return path.resolve()


def _shards(model: Path) -> dict[str, Path]:
    """checkpoint key -> safetensors file holding it."""
    index = model / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
        return {key: model / shard for key, shard in weight_map.items()}
    single = model / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(single, framework="pt") as f:
            return dict.fromkeys(f.keys(), single)
    raise _refuse(f"Model folder {str(model)!r} holds no safetensors checkpoint (model.safetensors or its index).",
                  "Save the model with save_pretrained(..., safe_serialization=True).", "model")  # fmt: skip


def _tokenizer_pre(model: Path) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for a byte-level BPE tokenizer, read off its pre-tokenizer.

    llama.cpp's converter recognizes a tokenizer by hashing its output on a check text; here the
    split rule itself is matched against the ones transformers' GGUF reader knows (its table of
    llama.cpp names), so the file names a split that the reader (and llama.cpp) applies again. A
    lone ByteLevel pre-tokenizer with its built-in regex is GPT-2's ("gpt-2")."""
    import gguf.vocab
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    hint = "This export writes byte-level BPE tokenizers (Llama 3, Qwen2/3, Mistral Nemo style) only."
    try:
        gguf.vocab.BpeVocab(model)  # raises unless tokenizer.json is a byte-level BPE (GPT-2 style)
    except (FileNotFoundError, ValueError) as exc:
        raise _refuse(f"The tokenizer in {str(model)!r} is not a byte-level BPE tokenizer.json ({exc}).", hint, "model") from exc
    pre = json.loads((model / "tokenizer.json").read_text(encoding="utf-8")).get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if (len(parts) == 2 and parts[0].get("type") == "Split" and parts[1].get("type") == "ByteLevel"
            and not parts[1].get("use_regex", True)):  # fmt: skip
        regex = (parts[0].get("pattern") or {}).get("Regex")
        for name, split in GGUF_PRE_TOKENIZER_SPLITS.items():
            if split == regex:
                return name
    raise _refuse(f"The tokenizer's pre-tokenizer in {str(model)!r} is not one llama.cpp names here.",
                  "Supported: GPT-2's ByteLevel, or a Split of one of " + ", ".join(sorted(set(GGUF_PRE_TOKENIZER_SPLITS))) + ".",
                  "model")  # fmt: skip


def plan_export(model: str, output: str, type_: str) -> _Plan:
    """Every check that needs no weights: the type, the output, the folder, the architecture, the
    rope settings, the tokenizer, and a GGUF name for every checkpoint tensor."""
    import gguf
    from safetensors import safe_open
    from transformers import AutoConfig

    qtype, _ = _check_type(type_)
    out = _check_output(output)
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise _refuse(f"Model folder {model!r} does not exist.", "Give --model a transformers model folder.", "model")
    if not (folder / "config.json").is_file():
        raise _refuse(f"{model!r} has no config.json.", "Give --model a folder written by save_pretrained.", "model")
    config = AutoConfig.from_pretrained(folder)
    arch = (getattr(config, "architectures", None) or ["?"])[0]
    if arch not in FAMILIES:
        raise _refuse(f"Architecture {arch} has no GGUF export here.", f"Supported: {', '.join(FAMILIES)}.", "model")
    if getattr(config, "quantization_config", None):
        raise _refuse(f"{model!r} holds a quantized checkpoint.",
                      "Export a full-precision folder: merge the adapter into the full-precision base first.", "model")  # fmt: skip
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise _refuse(f"Rope scaling {rope.get('rope_type')!r} is not written by this export yet.",
                      "Supported: unscaled rotary embeddings (rope_type 'default').", "model")  # fmt: skip
    family = FAMILIES[arch]
    plan = _Plan(folder, out, type_, arch, family, config, _tokenizer_pre(folder))

    n_blocks = config.num_hidden_layers
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[family.gguf_arch], n_blocks)
    shards = _shards(folder)
    unnamed = []
    open_files: dict[Path, Any] = {}
    try:
        for key, shard in shards.items():
            if key.endswith("rotary_emb.inv_freq") or (key == "lm_head.weight" and config.tie_word_embeddings):
                continue  # a buffer transformers recomputes; a tied head (llama.cpp reuses token_embd)
            name = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if name is None:
                unnamed.append(key)
                continue
            f = open_files.get(shard) or open_files.setdefault(shard, safe_open(shard, framework="pt").__enter__())
            shape = tuple(f.get_slice(key).get_shape())
            if len(shape) <= 1:
                t = gguf.GGMLQuantizationType.F32
            elif qtype == gguf.GGMLQuantizationType.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
                t = gguf.GGMLQuantizationType.F16  # what llama.cpp's converter falls back to
            else:
                t = qtype
            block = int(name.split(".")[1]) if name.startswith("blk.") else None
            plan.tensors.append(_Tensor(key, name, shape, t, shard, block))
    finally:
        for f in open_files.values():
            f.__exit__(None, None, None)
    if unnamed:
        raise _refuse(f"{len(unnamed)} checkpoint tensors have no {family.gguf_arch.lower()} GGUF name "
                      f"(first: {unnamed[0]}).", "Export a plain causal-LM checkpoint of a supported family.", "model")  # fmt: skip
    return plan


# ---------------------------------------------------------------------------- writing
def _heads(config: Any) -> tuple[int, int, int]:
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    return n_head, n_kv, head_dim


def _permute(w: Any, n_head: int) -> Any:
    """llama.cpp's rotary row order for a Llama q or k projection (convert_hf_to_gguf LlamaModel.permute):
    each head's rows (r0 .. r(d/2-1) | r(d/2) .. r(d-1)) interleaved as pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _converted(plan: _Plan, t: _Tensor, f: Any) -> Any:
    """The tensor as the GGUF stores it, in float32 numpy (before quantization)."""
    import torch

    w = f.get_tensor(t.source).to(torch.float32)
    if plan.family.rotary_permute:
        n_head, n_kv, _ = _heads(plan.config)
        if t.source.endswith(("q_proj.weight", "q_proj.bias")):
            w = _permute(w, n_head)
        elif t.source.endswith(("k_proj.weight", "k_proj.bias")):
            w = _permute(w, n_kv)
    return w.numpy()


def _add_metadata(writer: Any, plan: _Plan, file_type: Any) -> None:
    import gguf

    c = plan.config
    n_head, n_kv, head_dim = _heads(c)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(plan.model.name)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    rope = getattr(c, "rope_parameters", None) or {}
    if "rope_theta" in rope:
        writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    if getattr(c, "head_dim", None) is not None:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if plan.family.gguf_arch == "LLAMA":
        writer.add_vocab_size(c.vocab_size)
        writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_vocab(writer, plan)


def _add_vocab(writer: Any, plan: _Plan) -> None:
    """Tokens and their types as llama.cpp's converter lists them (get_vocab_base), merges and
    special tokens from gguf.vocab.SpecialVocab."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(plan.model)
    n_vocab = plan.config.vocab_size
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= n_vocab:
        raise InputError(f"The tokenizer has ids up to {max(vocab.values())}, beyond the model's vocab_size {n_vocab}.",
                         "Resize the model's embeddings to the tokenizer before exporting.", field="model")  # fmt: skip
    reverse = {i: tok for tok, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.USER_DEFINED)
        elif i in added:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(plan.tokenizer_pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.vocab.SpecialVocab(plan.model, load_merges=True, n_vocab=n_vocab).add_to_gguf(writer, quiet=True)


def export_gguf(model: str, output: str, type_: str = "f16",
                on_event: Callable[[Any], None] | None = None, cancel: Any = None) -> GgufExport:  # fmt: skip
    """Write `model` (a full-precision transformers folder) to the GGUF file `output`, checked."""
    import gguf
    from safetensors import safe_open

    from quailora_core.errors import Cancelled
    from quailora_core.events import Log, Stage

    emit = on_event or (lambda event: None)
    start = time.perf_counter()
    plan = plan_export(model, output, type_)
    _, file_type = _check_type(type_)
    tmp = plan.output.with_name(f".{plan.output.stem}.partial-{os.getpid()}.gguf")
    emit(Stage("export", len(plan.tensors)))
    emit(Log("info", f"writing {len(plan.tensors)} tensors of {plan.architecture} as GGUF "
                     f"{gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[plan.family.gguf_arch]]} {type_} to {plan.output}"))
    try:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[plan.family.gguf_arch]])
        _add_metadata(writer, plan, file_type)
        for t in plan.tensors:
            block_elems, type_bytes = gguf.GGML_QUANT_SIZES[t.qtype]
            n = 1
            for d in t.shape:
                n *= d
            writer.add_tensor_info(t.name, t.shape, gguf.np.dtype("float32"), n // block_elems * type_bytes, raw_dtype=t.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        open_files: dict[Path, Any] = {}
        try:
            for t in plan.tensors:
                if cancel is not None and cancel.cancelled:
                    raise Cancelled()
                f = open_files.get(t.shard) or open_files.setdefault(t.shard, safe_open(t.shard, framework="pt").__enter__())
                writer.write_tensor_data(gguf.quants.quantize(_converted(plan, t, f), t.qtype))
        finally:
            for f in open_files.values():
                f.__exit__(None, None, None)
            writer.close()
        emit(Stage("verify"))
        checked, max_err = _check(plan, tmp)
        if plan.output.exists():
            raise InputError(f"Output {str(plan.output)!r} appeared while exporting.", "Choose another --output.", field="output")
        tmp.replace(plan.output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    kept = tuple(t.name for t in plan.tensors if len(t.shape) > 1 and t.qtype.name != TYPES[type_][0])
    return GgufExport(plan.output, plan.architecture, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[plan.family.gguf_arch]],
                      type_, len(plan.tensors), plan.output.stat().st_size, checked, max_err, kept,
                      time.perf_counter() - start)  # fmt: skip


# ---------------------------------------------------------------------------- reading back
def _check(plan: _Plan, path: Path) -> tuple[int, float]:
    """Read the file back: every tensor's name, shape and type; the values of the non-block tensors
    and of the first and last block against the source; the tokenizer on a sample text."""
    import gguf
    import numpy as np
    import torch
    from safetensors import safe_open
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    reader = gguf.GGUFReader(path)
    found = {t.name: t for t in reader.tensors}
    want = {t.name: t for t in plan.tensors}
    if set(found) != set(want):
        raise EngineError(f"The GGUF file holds tensors {sorted(set(found) ^ set(want))[:5]} it should not, or lacks them.",
                          "This is a bug in the export; nothing was written.")  # fmt: skip
    for name, t in want.items():
        got = found[name]
        if tuple(int(d) for d in reversed(got.shape)) != t.shape or got.tensor_type != t.qtype:
            raise EngineError(f"GGUF tensor {name} reads back as {tuple(reversed(got.shape))} {got.tensor_type.name}, "
                              f"not {t.shape} {t.qtype.name}.", "This is a bug in the export; nothing was written.")  # fmt: skip
    n_head, n_kv, _ = _heads(plan.config)
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[plan.family.gguf_arch]]
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(
        config={"num_attention_heads": n_head, "num_key_value_heads": n_kv})  # transformers' inverse of the layout
    last = plan.config.num_hidden_layers - 1
    checked, max_err = 0, 0.0
    for t in plan.tensors:
        if t.block not in (None, 0, last):
            continue
        with safe_open(t.shard, framework="pt") as f:
            source = f.get_tensor(t.source).to(torch.float32).numpy()
        got = gguf.quants.dequantize(found[t.name].data, t.qtype).reshape(t.shape)
        got = processor.process(weights=got, name=t.name).weights
        err = np.abs(got - source)
        if t.qtype == gguf.GGMLQuantizationType.Q8_0:
            # q = round(x / d), d = amax / 127 per block of 32 stored in float16: |error| <= d/2 + 127 d 2^-11
            block = gguf.GGML_QUANT_SIZES[t.qtype][0]
            amax = np.abs(source.reshape(-1, block)).max(axis=1, keepdims=True)
            ok = bool((err.reshape(-1, block) <= 0.6 * amax / 127 + 1e-12).all())
        else:
            expected = {gguf.GGMLQuantizationType.F32: torch.float32, gguf.GGMLQuantizationType.F16: torch.float16,
                        gguf.GGMLQuantizationType.BF16: torch.bfloat16}[t.qtype]  # fmt: skip
            ok = np.array_equal(got, torch.from_numpy(source).to(expected).to(torch.float32).numpy())
        if not ok:
            raise EngineError(f"GGUF tensor {t.name} does not read back as the source {t.source} "
                              f"(largest difference {float(err.max()):.3g}).", "This is a bug in the export; nothing was written.")  # fmt: skip
        checked += 1
        max_err = max(max_err, float(err.max()))
    _check_tokenizer(plan, path)
    return checked, max_err


def _check_tokenizer(plan: _Plan, path: Path) -> None:
    """The tokenizer transformers builds from the file encodes a sample text as the source does."""
    from transformers import AutoTokenizer

    source = AutoTokenizer.from_pretrained(plan.model)
    rebuilt = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    specials = " ".join(t for t in (source.bos_token, source.eos_token) if t)
    for text in (SAMPLE_TEXT, f"{SAMPLE_TEXT} {specials}"):
        want, got = source.encode(text), rebuilt.encode(text)
        if want != got:
            raise EngineError(f"The GGUF tokenizer encodes a sample text differently from the source ({got[:12]} vs {want[:12]}).",
                              f"tokenizer.ggml.pre {plan.tokenizer_pre!r} may not fit this tokenizer; nothing was written.")  # fmt: skip
