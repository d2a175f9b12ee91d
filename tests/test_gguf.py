"""`quailora export-gguf`: a full-precision model folder becomes a GGUF file that llama.cpp's other
reader, transformers, loads back to the same model and tokenizer.

Tiny random Llama, Mistral, Qwen2 and Qwen3 models (and a tied-embedding Llama) with byte-level
BPE tokenizers trained here on the sample text: GPT-2's pre-tokenizer for the Llama family, Qwen2's
split for the Qwen family. The end-to-end check is independent of the exporter: transformers'
`from_pretrained(..., gguf_file=...)` reverses the GGUF layout (the rotary permutation, the names)
on its own, and its logits must match the source model's with its weights rounded as the file
stores them (f16 / bf16; 1-D tensors stay float32), or lie within a measured bound for q8_0.

Also a SentencePiece-style BPE (Metaspace, byte fallback, like Llama 2's tokenizer.json) on Llama
and Mistral, and rope scaling: llama3 on Llama, linear on Qwen2. transformers' reader drops
rope_freqs and the rope.scaling keys, so those logits are compared after giving the reader's model
the inverse frequencies llama.cpp derives from the file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers as tf
from tiny_models import save_tiny, tiny_config
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from quailora_core.cli import main
from quailora_core.demo import resources_dir
from quailora_core.serving import gguf_export
from quailora_core.serving.gguf_export import export_gguf

SENTENCE = "Serving a merged QuAILoRA fine-tune: 2048 tokens, naïve café, 'quoted' text\nand a new line."
# q8_0 logits against the float32 source: largest difference over the largest |logit|. Measured on
# these models (seed 3): Llama 1.05e-2, Qwen2 1.07e-2, Qwen3 (head_dim 128) 2.17e-2.
Q8_0_LOGIT_BOUND = 5e-2


def _tokenizer(folder: Path, split: str | None) -> Path:
    """A byte-level BPE trained on the sample text: GPT-2's ByteLevel regex, or `split` then bytes.
    It holds <|endoftext|>, which transformers' Qwen2Tokenizer (what a Qwen folder loads as) adds otherwise."""
    from transformers import PreTrainedTokenizerFast

    text = (resources_dir() / "sample-text" / "calibration.txt").read_text(encoding="utf-8").splitlines()
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<s>", "</s>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)  # fmt: skip
    tok.train_from_iterator(text, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(folder)
    return folder


def _spm_tokenizer(folder: Path) -> Path:
    """A SentencePiece-style BPE like Llama 2's tokenizer.json: ▁ for spaces (Metaspace, prefix on the
    first word), byte fallback through <0x00>..<0xFF> (digits and accents are not in the 500-token
    vocabulary, so they fall back), Llama's decoder, <s> prepended."""
    from transformers import PreTrainedTokenizerFast

    text = (resources_dir() / "sample-text" / "calibration.txt").read_text(encoding="utf-8").splitlines()
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])  # fmt: skip
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tok.train_from_iterator(text, trainer=trainers.BpeTrainer(vocab_size=500, special_tokens=specials, show_progress=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)  # as Llama encodes
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, Path]:
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    root = tmp_path_factory.mktemp("tokenizers")
    return {"gpt-2": _tokenizer(root / "gpt2", None), "qwen2": _tokenizer(root / "qwen2", PRETOKENIZE_REGEX),
            "spm": _spm_tokenizer(root / "spm")}  # fmt: skip


FAMILY_TOKENIZER = {"llama": "gpt-2", "llama_tied": "gpt-2", "mistral": "gpt-2", "qwen2": "qwen2", "qwen3": "qwen2",
                    "llama_spm": "spm", "mistral_spm": "spm", "llama3_rope": "spm", "qwen2_linear": "qwen2"}  # fmt: skip
# Llama 3.1's rope scaling with original_max_position_embeddings 16 (not 8192) so that every
# frequency of a head_dim-16 model is scaled: the sentence's positions then tell scaled from unscaled.
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}  # fmt: skip
LINEAR_ROPE = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}


@pytest.fixture(scope="module")
def models_dir(tokenizers, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    # general.name is the folder's name; transformers reads a file named exactly "mistral" as a
    # Mistral architecture its gguf mapping lacks, so the folders are named tiny-<kind>
    return {kind: _save(kind, root / f"tiny-{kind}", tokenizers[pre]) for kind, pre in FAMILY_TOKENIZER.items()}


def _save(kind: str, folder: Path, tokenizer_dir: Path) -> Path:
    """The tiny model of `kind` with this tokenizer. Qwen3 gets head_dim 128, what every Qwen3 has:
    transformers' GGUF reader takes Qwen3's head_dim from its config default, not from the file."""
    base = {"llama_spm": "llama", "mistral_spm": "mistral", "llama3_rope": "llama", "qwen2_linear": "qwen2"}.get(kind, kind)
    if kind not in ("qwen3", "llama3_rope", "qwen2_linear"):
        return save_tiny(base, folder, seed=3, tokenizer_from=tokenizer_dir)
    tokenizer = tf.AutoTokenizer.from_pretrained(tokenizer_dir)
    config = tiny_config(base, len(tokenizer))
    if kind == "qwen3":
        config.head_dim = 128
    else:
        config.rope_parameters = dict(LLAMA3_ROPE if kind == "llama3_rope" else LINEAR_ROPE)
    torch.manual_seed(3)
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _logits(model: tf.PreTrainedModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()


def _stored(w: torch.Tensor, type_: str) -> torch.Tensor:
    """`w` rounded as a GGUF of `type_` stores it. q8_0 blocks run along rows, which the rotary
    permutation only reorders, so rounding in the source layout is the file's rounding."""
    if type_ == "q8_0":
        q8 = gguf.GGMLQuantizationType.Q8_0
        return torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), q8), q8)).reshape(w.shape)
    return w.to({"f16": torch.float16, "bf16": torch.bfloat16}[type_]).float()


CASES = [("llama", "f16"), ("llama", "bf16"), ("llama", "q8_0"), ("mistral", "f16"), ("qwen2", "f16"),
         ("qwen2", "bf16"), ("qwen2", "q8_0"), ("qwen3", "bf16"), ("qwen3", "q8_0"), ("llama_tied", "f16"),
         ("llama_spm", "f16"), ("mistral_spm", "q8_0")]  # fmt: skip


@pytest.mark.parametrize(("kind", "type_"), CASES)
def test_transformers_loads_the_gguf_as_the_source_model(kind, type_, models_dir, tmp_path):
    source_dir = models_dir[kind]
    out = tmp_path / f"{kind}.gguf"
    result = export_gguf(str(source_dir), str(out), type_)
    assert result.output == out.resolve() and out.is_file() and result.values_checked > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary file left

    tokenizer = tf.AutoTokenizer.from_pretrained(source_dir)
    from_gguf = tf.AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    assert from_gguf.encode(SENTENCE) == tokenizer.encode(SENTENCE)

    ids = torch.tensor([tokenizer.encode(SENTENCE)])
    source = tf.AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32).eval()
    loaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32).eval()
    got = _logits(loaded, ids)
    if type_ == "q8_0":  # the stated bound against the float32 source
        want = _logits(source, ids)
        assert float((got - want).abs().max() / want.abs().max()) < Q8_0_LOGIT_BOUND
    with torch.no_grad():  # the source rounded as the file stores it; 1-D tensors (norms, biases) stay float32
        for p in source.parameters():
            if p.dim() > 1:
                p.copy_(_stored(p, type_))
    torch.testing.assert_close(got, _logits(source, ids), rtol=1e-5, atol=1e-5)


def test_the_file_holds_what_llama_cpp_reads(models_dir, tmp_path):
    """Architecture names, per-family tensors, the tokenizer's pre-split, tied heads, q8_0 blocks."""
    expected = {"llama": ("llama", "gpt-2"), "mistral": ("llama", "gpt-2"), "qwen2": ("qwen2", "qwen2"),
                "qwen3": ("qwen3", "qwen2"), "llama_tied": ("llama", "gpt-2")}  # fmt: skip
    for kind, (arch, pre) in expected.items():
        out = tmp_path / f"{kind}.gguf"
        export_gguf(str(models_dir[kind]), str(out), "q8_0")
        reader = gguf.GGUFReader(out)
        field = reader.fields
        assert field["general.architecture"].contents() == arch
        assert field["tokenizer.ggml.pre"].contents() == pre
        assert field["tokenizer.ggml.model"].contents() == "gpt2"
        config = json.loads((models_dir[kind] / "config.json").read_text())
        assert field[f"{arch}.block_count"].contents() == config["num_hidden_layers"]
        assert field[f"{arch}.attention.head_count_kv"].contents() == config["num_key_value_heads"]
        tensors = {t.name: t for t in reader.tensors}
        assert ("output.weight" in tensors) == (kind != "llama_tied")
        assert ("blk.0.attn_q.bias" in tensors) == (kind == "qwen2")
        assert ("blk.1.attn_k_norm.weight" in tensors) == (kind == "qwen3")
        assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
        assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
        assert list(tensors["token_embd.weight"].shape) == [config["hidden_size"], config["vocab_size"]]  # ggml order


def test_the_q_rows_are_in_llama_cpps_rotary_order(models_dir, tmp_path):
    """Llama's query rows are permuted (each head's halves interleaved); Qwen2's are not."""
    from safetensors.torch import load_file

    for kind, permuted in (("llama", True), ("qwen2", False)):
        out = tmp_path / f"{kind}.gguf"
        export_gguf(str(models_dir[kind]), str(out), "f16")
        q = next(t for t in gguf.GGUFReader(out).tensors if t.name == "blk.0.attn_q.weight")
        got = np.asarray(q.data, dtype=np.float32)
        source = load_file(models_dir[kind] / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
        source = source.to(torch.float16).float().numpy()
        head_dim = source.shape[0] // json.loads((models_dir[kind] / "config.json").read_text())["num_attention_heads"]
        if permuted:  # row 1 of head 0 is source row head_dim/2: the first pair of rotated rows
            np.testing.assert_array_equal(got[1], source[head_dim // 2])
            assert not np.array_equal(got, source)
        else:
            np.testing.assert_array_equal(got, source)


def test_a_wrong_file_is_refused_and_nothing_is_written(models_dir, tmp_path, monkeypatch):
    """The export reads its own file back: without the rotary permutation the values disagree."""
    monkeypatch.setattr(gguf_export, "_permute", lambda w, n_head: w)
    out = tmp_path / "wrong.gguf"
    with pytest.raises(gguf_export.EngineError, match="does not read back as the source"):
        export_gguf(str(models_dir["llama"]), str(out), "f16")
    assert list(tmp_path.iterdir()) == []


def _refusal(capsys, *argv: str) -> str:
    code = main(["export-gguf", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


def test_bad_input_is_one_line_and_writes_nothing(models_dir, tmp_path, capsys):
    out = str(tmp_path / "m.gguf")
    assert "does not exist" in _refusal(capsys, "--model", str(tmp_path / "missing"), "--output", out)
    err = _refusal(capsys, "--model", str(models_dir["llama"]), "--output", out, "--type", "q4_k")
    assert "q4_k" in err and "f16 | bf16 | q8_0" in err
    phi = save_tiny("phi", tmp_path / "phi")
    capsys.readouterr()
    err = _refusal(capsys, "--model", str(phi), "--output", out)
    assert "PhiForCausalLM" in err and "Qwen3ForCausalLM" in err
    assert not (tmp_path / "m.gguf").exists()
    existing = tmp_path / "existing.gguf"
    existing.write_bytes(b"keep")
    assert "already exists" in _refusal(capsys, "--model", str(models_dir["llama"]), "--output", str(existing))
    assert existing.read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.gguf", "phi"]


def test_the_command_writes_the_file(models_dir, tmp_path, capsys):
    out = tmp_path / "cli.gguf"
    assert main(["export-gguf", "--model", str(models_dir["qwen3"]), "--output", str(out), "--type", "bf16"]) == 0
    assert "GGUF qwen3 bf16 written to" in capsys.readouterr().out
    assert gguf.GGUFReader(out).fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_BF16


def test_a_sentencepiece_style_tokenizer_is_written_as_llama_cpps_llama_vocabulary(models_dir, tokenizers, tmp_path):
    """tokenizer.ggml.model "llama" with scores and types, no merges: transformers rebuilds the merges
    from the scores alone, as llama.cpp's SentencePiece tokenizer ranks pairs by them, and gets the ids."""
    out = tmp_path / "spm.gguf"
    export_gguf(str(models_dir["llama_spm"]), str(out), "f16")
    field = gguf.GGUFReader(out).fields
    assert field["tokenizer.ggml.model"].contents() == "llama"
    assert field["tokenizer.ggml.pre"].contents() == "default"
    assert "tokenizer.ggml.merges" not in field
    tokens, types = field["tokenizer.ggml.tokens"].contents(), field["tokenizer.ggml.token_type"].contents()
    scores = field["tokenizer.ggml.scores"].contents()
    assert types[tokens.index("<0xC3>")] == gguf.TokenType.BYTE and types[tokens.index("<s>")] == gguf.TokenType.CONTROL
    merges = json.loads((models_dir["llama_spm"] / "tokenizer.json").read_text())["model"]["merges"]
    assert len(set(scores)) == len(merges) + 1 > 100  # one per merge, one for the rest; not LlamaHfVocab's -1000 for all
    source = tf.AutoTokenizer.from_pretrained(models_dir["llama_spm"])
    rebuilt = tf.AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    for text in (SENTENCE, "  two leading spaces, ünïcödé ✓ and 中文", "x"):
        want = source.encode(text)
        assert rebuilt.encode(text) == want
    assert any(source.convert_ids_to_tokens(i).startswith("<0x") for i in source.encode(SENTENCE))  # byte fallback ran


def test_scores_out_of_merge_order_are_refused_by_the_read_back(models_dir, tmp_path, monkeypatch):
    """The scores are the merge order: reversed (the last merge first), the tokenizer transformers
    rebuilds from them encodes the sample text differently, and the export writes nothing.
    (All-equal scores, LlamaHfVocab's placeholder, pass this check: transformers breaks the ties by
    piece length and id, llama.cpp by position, so only distinct scores agree in both.)"""
    real = gguf_export._merge_scores

    def reversed_order(bpe):
        made, floor = real(bpe)
        return {i: floor - score for i, score in made.items()}, floor

    monkeypatch.setattr(gguf_export, "_merge_scores", reversed_order)
    with pytest.raises(gguf_export.EngineError, match="encodes a sample text differently"):
        export_gguf(str(models_dir["llama_spm"]), str(tmp_path / "flat.gguf"), "f16")
    assert list(tmp_path.iterdir()) == []


def _unscaled_inv_freq(model: tf.PreTrainedModel) -> torch.Tensor:
    return type(model.model.rotary_emb).compute_default_rope_parameters(model.config)[0]


def test_llama3_rope_scaling_is_written_as_rope_freqs(models_dir, tmp_path):
    """rope_freqs.weight holds llama.cpp's divisors: unscaled / rope_freqs is the inverse frequency
    transformers' own llama3 model rotates by. transformers' GGUF reader drops rope_freqs and loads the
    file unscaled (asserted, so this test notices when it learns to), so the logits are compared with
    the reader's model given llama.cpp's rule, inv_freq = theta^(-2i/d) / rope_freqs[i]."""
    out = tmp_path / "llama3.gguf"
    export_gguf(str(models_dir["llama3_rope"]), str(out), "f16")
    reader = gguf.GGUFReader(out)
    freqs = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
    assert freqs.tensor_type == gguf.GGMLQuantizationType.F32
    assert "llama.rope.scaling.type" not in reader.fields  # llama.cpp's converter writes the tensor only
    source = tf.AutoModelForCausalLM.from_pretrained(models_dir["llama3_rope"], dtype=torch.float32).eval()
    unscaled = _unscaled_inv_freq(source)
    file_freqs = torch.from_numpy(np.asarray(freqs.data, dtype=np.float32).copy())
    assert file_freqs.shape == unscaled.shape and (file_freqs > 1).any()
    torch.testing.assert_close(unscaled / file_freqs, source.model.rotary_emb.inv_freq, rtol=1e-6, atol=0)

    loaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32).eval()
    assert loaded.config.rope_parameters["rope_type"] == "default"  # the reader's limit, not the file's
    ids = torch.tensor([tf.AutoTokenizer.from_pretrained(models_dir["llama3_rope"]).encode(SENTENCE)])
    with torch.no_grad():
        for p in source.parameters():
            if p.dim() > 1:
                p.copy_(_stored(p, "f16"))
    want = _logits(source, ids)
    assert not torch.allclose(_logits(loaded, ids), want, atol=1e-3)  # unscaled is measurably different
    loaded.model.rotary_emb.inv_freq = unscaled / file_freqs
    torch.testing.assert_close(_logits(loaded, ids), want, rtol=1e-5, atol=1e-5)


def test_linear_rope_scaling_is_written_as_keys(models_dir, tmp_path):
    """Linear scaling: rope.scaling.type "linear" and factor, which llama.cpp applies as
    freq_scale = 1/factor; checked the same way (the reader ignores the keys)."""
    out = tmp_path / "linear.gguf"
    export_gguf(str(models_dir["qwen2_linear"]), str(out), "f16")
    field = gguf.GGUFReader(out).fields
    assert field["qwen2.rope.scaling.type"].contents() == "linear"
    factor = float(field["qwen2.rope.scaling.factor"].contents())
    assert factor == LINEAR_ROPE["factor"]
    source = tf.AutoModelForCausalLM.from_pretrained(models_dir["qwen2_linear"], dtype=torch.float32).eval()
    loaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32).eval()
    ids = torch.tensor([tf.AutoTokenizer.from_pretrained(models_dir["qwen2_linear"]).encode(SENTENCE)])
    with torch.no_grad():
        for p in source.parameters():
            if p.dim() > 1:
                p.copy_(_stored(p, "f16"))
    want = _logits(source, ids)
    assert not torch.allclose(_logits(loaded, ids), want, atol=1e-3)
    loaded.model.rotary_emb.inv_freq = _unscaled_inv_freq(loaded) / factor
    torch.testing.assert_close(_logits(loaded, ids), want, rtol=1e-5, atol=1e-5)


def test_inverted_rope_freqs_are_refused_by_the_read_back(models_dir, tmp_path, monkeypatch):
    real = gguf_export._rope

    def inverted(config, family, model):
        rope = real(config, family, model)
        return gguf_export._Rope(rope.type, rope.factor, 1 / rope.freqs, rope.inv_freq)

    monkeypatch.setattr(gguf_export, "_rope", inverted)
    with pytest.raises(gguf_export.EngineError, match="rope scaling reads back"):
        export_gguf(str(models_dir["llama3_rope"]), str(tmp_path / "inv.gguf"), "f16")
    assert list(tmp_path.iterdir()) == []


def test_unsupported_rope_and_tokenizers_are_one_line_refusals(models_dir, tokenizers, tmp_path, capsys):
    out = str(tmp_path / "m.gguf")
    yarn = tmp_path / "yarn"
    shutil.copytree(models_dir["llama"], yarn)
    config = json.loads((yarn / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                 "original_max_position_embeddings": 32}  # fmt: skip
    (yarn / "config.json").write_text(json.dumps(config))
    err = _refusal(capsys, "--model", str(yarn), "--output", out)
    assert "'yarn'" in err and "llama3" in err
    qwen_llama3 = tmp_path / "qwen-llama3"
    shutil.copytree(models_dir["qwen2"], qwen_llama3)
    config = json.loads((qwen_llama3 / "config.json").read_text())
    config["rope_parameters"] = dict(LLAMA3_ROPE)
    (qwen_llama3 / "config.json").write_text(json.dumps(config))
    assert "llama.cpp reads rope_freqs for llama only" in _refusal(capsys, "--model", str(qwen_llama3), "--output", out)
    sp_only = tmp_path / "sp-only"
    shutil.copytree(models_dir["llama_spm"], sp_only)
    (sp_only / "tokenizer.json").unlink()
    (sp_only / "tokenizer.model").write_bytes(b"\x00")  # never read: refused before
    assert "tokenizer.model but no tokenizer.json" in _refusal(capsys, "--model", str(sp_only), "--output", out)
    unigram = tmp_path / "unigram"
    shutil.copytree(models_dir["llama_spm"], unigram)
    tok = Tokenizer(models.Unigram([("<unk>", 0.0), ("\u2581a", -1.0), ("a", -2.0)], unk_id=0, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.save(str(unigram / "tokenizer.json"))
    assert "not a byte-level BPE" in _refusal(capsys, "--model", str(unigram), "--output", out)
    assert not Path(out).exists()
