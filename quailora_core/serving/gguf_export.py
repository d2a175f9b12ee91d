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

Two things Llama 2 / Mistral v0.1-v0.3 and Llama 3.1-3.3 folders carry, also as the converter writes
them. A SentencePiece-style BPE tokenizer.json (byte fallback, ▁ for spaces) becomes a "llama"
vocabulary of tokens, scores and types (`gguf.vocab.LlamaHfVocab`, with scores that carry the merge
order, see `_add_llama_vocab`); a `tokenizer.model` alone is refused, since the sentencepiece package
its reader needs is not a dependency. Rope scaling: "llama3" becomes a `rope_freqs.weight` tensor of
divisors computed from transformers' own llama3 and unscaled inverse frequencies (`_rope`), "linear"
the rope.scaling keys; yarn and the rest are refused before any weight is read, because llama.cpp's
handling of their attention factors is not something this export can check.

Tensors stream: the header lists every tensor from the checkpoint's safetensors metadata, then each
tensor is read, converted and written in turn, so one tensor is in memory at a time. The file is
written next to the target under a temporary name and renamed into place only after it has been
read back and checked (`_check`): every tensor's name, shape and type, the values of the
non-block tensors and of the first and last block against the source (through transformers' own
GGUF inverse transforms, q8_0 dequantized by `gguf.quants` within its rounding bound), and a
sample text tokenized by the tokenizer transformers rebuilds from the file against the source
tokenizer, and the rope scaling (`_check_rope`). Anything that disagrees fails the export and leaves nothing.
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
    shard: Path | None
    block: int | None
    values: Any = None  # a tensor made here, not read from the checkpoint (llama3's rope_freqs)


@dataclass(frozen=True)
class _Rope:
    """How the file carries the config's rotary scaling, after llama.cpp's converter (LlamaModel):
    "default" nothing; "linear" the keys rope.scaling.type/factor, which llama.cpp turns into
    freq_scale = 1/factor; "llama3" a float32 `rope_freqs.weight` of head_dim/2 divisors, llama.cpp
    rotating pair i by pos * theta^(-2i/d) / rope_freqs[i]."""

    type: str = "default"
    factor: float = 1.0  # linear
    freqs: Any = None  # llama3: numpy float32 (head_dim/2,), transformers' unscaled / llama3 inverse frequencies
    inv_freq: Any = None  # llama3: transformers' llama3 inverse frequencies, for the read-back check


def _rope(config: Any, family: Family, model: str) -> _Rope:
    """The rope scaling, with the inverse frequencies asked of transformers (ROPE_INIT_FUNCTIONS),
    or a one-line refusal for a type llama.cpp's converter does not write simply."""
    rope = getattr(config, "rope_parameters", None) or {}
    if rope and not isinstance(rope.get("rope_type", "default"), str):  # per-layer-type dicts (not these families)
        raise _refuse(f"Per-layer rope parameters in {model!r} are not written by this export.", "Supported: one rope_parameters.", "model")
    kind = rope.get("rope_type", "default")
    if float(rope.get("partial_rotary_factor", 1.0)) != 1.0:
        raise _refuse(f"partial_rotary_factor {rope['partial_rotary_factor']} in {model!r} is not written by this export.",
                      "Supported: rotary embeddings over the whole head.", "model")  # fmt: skip
    if kind == "default":
        return _Rope()
    if kind == "linear":
        return _Rope("linear", float(rope["factor"]))
    if kind == "llama3" and family.gguf_arch == "LLAMA":
        import torch
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        inv_freq, attention = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
        base, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
        if attention != 1.0 or inv_freq.shape != base.shape:
            raise _refuse(f"llama3 rope in {model!r} scales attention by {attention}, which rope_freqs cannot carry.",
                          "Supported: llama3 rope as Llama 3.1-3.3 configure it.", "model")  # fmt: skip
        freqs = (base.to(torch.float64) / inv_freq.to(torch.float64)).to(torch.float32).numpy()
        return _Rope("llama3", float(rope.get("factor", 1.0)), freqs, inv_freq.to(torch.float32).numpy())
    where = "" if kind != "llama3" else f" for {family.gguf_arch.lower()} files (llama.cpp reads rope_freqs for llama only)"
    raise _refuse(f"Rope scaling {kind!r} is not written by this export{where}.",
                  "Supported: rope_type default, linear, and llama3 (Llama / Mistral).", "model")  # fmt: skip


@dataclass
class _Plan:
    model: Path
    output: Path
    type: str
    architecture: str
    family: Family
    config: Any
    tokenizer_model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece-style)
    tokenizer_pre: str
    rope: _Rope
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


def _check_output(output: str, parent_made: bool = False) -> Path:
    if not output:
        raise _refuse("No output file given.", "Use --output FILE.gguf.", "output")
    path = Path(output).expanduser()
    if path.suffix != ".gguf":
        raise _refuse(f"Output {output!r} does not end in .gguf.", "Name the file FILE.gguf.", "output")
    if path.exists():
        raise _refuse(f"Output {output!r} already exists.", "Choose another --output or remove the file.", "output")
    if not parent_made and not path.parent.is_dir():
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


def _tokenizer(model: Path) -> tuple[str, str]:
    """(tokenizer.ggml.model, tokenizer.ggml.pre): "gpt2" for a byte-level BPE, "llama" (pre
    "default", as llama.cpp's converter writes it) for a SentencePiece-style BPE with byte fallback
    that `gguf.vocab.LlamaHfVocab` accepts (Llama 2, Mistral v0.1-v0.3 tokenizer.json)."""
    import gguf.vocab

    if (model / "tokenizer.json").is_file():
        try:
            gguf.vocab.LlamaHfVocab(model)  # raises unless a BPE with byte fallback and a Sequence decoder
        except (FileNotFoundError, TypeError, KeyError):
            pass
        else:
            tok = json.loads((model / "tokenizer.json").read_text(encoding="utf-8"))
            pre, norm = tok.get("pre_tokenizer") or {}, tok.get("normalizer") or {}
            norms = norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm]
            metaspace = pre.get("type") == "Metaspace" and pre.get("prepend_scheme", "always") in ("first", "always")
            legacy = not pre and any(n.get("type") == "Prepend" and n.get("prepend") == "\u2581" for n in norms)
            if not (metaspace or legacy):  # llama.cpp's SentencePiece tokenizer always prefixes one "\u2581"
                raise _refuse(f"The SentencePiece-style tokenizer in {str(model)!r} does not prefix \u2581 as llama.cpp's does.",
                              "Supported: a Metaspace pre-tokenizer (prepend_scheme first) or Llama 2's Prepend normalizer.", "model")  # fmt: skip
            return "llama", "default"
    elif (model / "tokenizer.model").is_file():
        raise _refuse(f"{str(model)!r} has a SentencePiece tokenizer.model but no tokenizer.json.",
                      "Save the fast tokenizer (tokenizer.save_pretrained writes tokenizer.json); this export does not read "
                      "tokenizer.model (the sentencepiece package is not installed).", "model")  # fmt: skip
    return "gpt2", _tokenizer_pre(model)


def _tokenizer_pre(model: Path) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for a byte-level BPE tokenizer, read off its pre-tokenizer.

    llama.cpp's converter recognizes a tokenizer by hashing its output on a check text; here the
    split rule itself is matched against the ones transformers' GGUF reader knows (its table of
    llama.cpp names), so the file names a split that the reader (and llama.cpp) applies again. A
    lone ByteLevel pre-tokenizer with its built-in regex is GPT-2's ("gpt-2")."""
    import gguf.vocab
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    hint = ("This export writes byte-level BPE tokenizers (Llama 3, Qwen2/3, Mistral Nemo style) and "
            "SentencePiece-style BPE tokenizer.json with byte fallback (Llama 2, Mistral v0.1-v0.3).")
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


def check_export(model: str, output: str, type_: str, config: Any = None, parent_made: bool = False) -> None:
    """The refusals `export_gguf(model, output, type_)` gives before it reads a weight, for a folder
    that is not written yet (`merge_gguf` asks this of the base before merging): `model` is a
    folder with the same tensors and tokenizer, `config` the config the folder will hold, and
    `parent_made` says that output's folder will exist by then. Raises InputError; returns nothing."""
    plan_export(model, output, type_, config, parent_made)


def plan_export(model: str, output: str, type_: str, config: Any = None, parent_made: bool = False) -> _Plan:
    """Every check that needs no weights: the type, the output, the folder, the architecture, the
    rope settings, the tokenizer, and a GGUF name for every checkpoint tensor (see check_export for
    `config` and `parent_made`)."""
    import gguf
    from safetensors import safe_open
    from transformers import AutoConfig

    qtype, _ = _check_type(type_)
    out = _check_output(output, parent_made)
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise _refuse(f"Model folder {model!r} does not exist.", "Give --model a transformers model folder.", "model")
    if not (folder / "config.json").is_file():
        raise _refuse(f"{model!r} has no config.json.", "Give --model a folder written by save_pretrained.", "model")
    config = config if config is not None else AutoConfig.from_pretrained(folder)
    arch = (getattr(config, "architectures", None) or ["?"])[0]
    if arch not in FAMILIES:
        raise _refuse(f"Architecture {arch} has no GGUF export here.", f"Supported: {', '.join(FAMILIES)}.", "model")
    if getattr(config, "quantization_config", None):
        raise _refuse(f"{model!r} holds a quantized checkpoint.",
                      "Export a full-precision folder: merge the adapter into the full-precision base first.", "model")  # fmt: skip
    family = FAMILIES[arch]
    rope = _rope(config, family, model)
    plan = _Plan(folder, out, type_, arch, family, config, *_tokenizer(folder), rope)

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
    if rope.freqs is not None:  # what LlamaModel.generate_extra_tensors writes first
        name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        plan.tensors.insert(0, _Tensor("rope_parameters", name, rope.freqs.shape, gguf.GGMLQuantizationType.F32,
                                       None, None, rope.freqs))  # fmt: skip
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
    if plan.rope.type == "linear":  # LlamaModel.set_gguf_parameters; llama.cpp reads these for every architecture
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(plan.rope.factor)
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

    if plan.tokenizer_model == "llama":
        _add_llama_vocab(writer, plan)
        return

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


def _merge_scores(bpe: dict[str, Any]) -> tuple[dict[int, float], float]:
    """token id -> -rank of the first merge that makes it, and the score for every other token."""
    vocab, merges = bpe["vocab"], bpe.get("merges") or []
    made: dict[int, float] = {}
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        if left + right in vocab:
            made.setdefault(vocab[left + right], -float(rank))
    return made, -float(len(merges) + 1)


def _add_llama_vocab(writer: Any, plan: _Plan) -> None:
    """A SentencePiece-style BPE as llama.cpp's converter writes it (_set_vocab_llama_hf): tokens and
    types from gguf.vocab.LlamaHfVocab, tokenizer.ggml.model "llama", special tokens from SpecialVocab,
    no merges. llama.cpp's SentencePiece tokenizer merges the adjacent pair whose joined token scores
    highest, so the scores must carry the merge order; LlamaHfVocab leaves get_token_score a
    placeholder (-1000 for all, which merges left to right instead), so here a token made by merge r
    scores -r, as SentencePiece's own BPE scores its pieces, and every other token scores below all
    merges. transformers' reader rebuilds the merges from these same scores, so `_check_tokenizer`
    tests what llama.cpp will use."""
    import gguf

    made, floor = _merge_scores(json.loads((plan.model / "tokenizer.json").read_text(encoding="utf-8"))["model"])

    class MergeOrderVocab(gguf.vocab.LlamaHfVocab):
        def get_token_score(self, token_id: int) -> float:
            return made.get(token_id, floor)

    source = MergeOrderVocab(plan.model)
    n_vocab = plan.config.vocab_size
    entries = list(source.all_tokens())
    if len(entries) > n_vocab:
        raise InputError(f"The tokenizer has {len(entries)} tokens, beyond the model's vocab_size {n_vocab}.",
                         "Resize the model's embeddings to the tokenizer before exporting.", field="model")  # fmt: skip
    ids = source.tokenizer.get_vocab()
    for i, (text, _, _) in enumerate(entries):  # LlamaHfVocab lists base then added tokens; they must be in id order
        if ids.get(text.decode("utf-8")) != i:
            raise EngineError(f"Token {i} of the vocabulary lists as {text!r}, which the tokenizer numbers {ids.get(text.decode())}.",
                              "The tokenizer's added tokens are not numbered after its base vocabulary; nothing was written.")  # fmt: skip
    entries += [(f"[PAD{i}]".encode(), floor, gguf.TokenType.UNUSED) for i in range(len(entries), n_vocab)]
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre(plan.tokenizer_pre)
    writer.add_token_list([text for text, _, _ in entries])
    writer.add_token_scores([score for _, score, _ in entries])
    writer.add_token_types([kind for _, _, kind in entries])
    gguf.vocab.SpecialVocab(plan.model, load_merges=False, n_vocab=n_vocab).add_to_gguf(writer, quiet=True)


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
                if t.values is not None:
                    writer.write_tensor_data(gguf.quants.quantize(t.values, t.qtype))
                    continue
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
    _check_rope(plan, reader, found)
    for t in plan.tensors:
        if t.block not in (None, 0, last) or t.values is not None:
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


def _check_rope(plan: _Plan, reader: Any, found: dict[str, Any]) -> None:
    """The rope scaling reads back: linear's keys, llama3's rope_freqs as divisors of the unscaled
    inverse frequencies that give transformers' llama3 ones (so not inverted, not reordered)."""
    import gguf
    import numpy as np
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[plan.family.gguf_arch]]
    fields = reader.fields
    kind = fields.get(gguf.Keys.Rope.SCALING_TYPE.format(arch=arch))
    factor = fields.get(gguf.Keys.Rope.SCALING_FACTOR.format(arch=arch))
    got = (kind.contents() if kind else "default", float(factor.contents()) if factor else None)
    want = ("linear", float(np.float32(plan.rope.factor))) if plan.rope.type == "linear" else ("default", None)
    name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
    ok = got == want
    if plan.rope.type == "llama3":
        freqs = np.asarray(found[name].data, dtype=np.float32).reshape(-1)
        base, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(plan.config)
        ok = ok and np.allclose(base.numpy() / freqs, plan.rope.inv_freq, rtol=1e-6, atol=0)
    if not ok:
        raise EngineError(f"The GGUF rope scaling reads back as {got} (rope_freqs: {name in found}), not {plan.rope.type}.",
                          "This is a bug in the export; nothing was written.")  # fmt: skip


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
