"""The demo model ships with the project: the very bytes the package expects, an ordinary
Hugging Face folder that loads offline and instantly, and a model for which 4-bit
quantization has a real cost (so the demo shows what the initialization recovers)."""

from __future__ import annotations

import hashlib
import json
import math
import shutil

import pytest
import torch

from quailora_core import demo
from quailora_core.errors import InputError
from quailora_core.model.info import resolve_model_path, summarize_model
from quailora_core.sources.corpus import finetune_corpus
from quailora_core.sources.packing import pack


def test_shipped_files_are_exactly_what_the_package_expects(demo_model):
    assert demo_model == demo.demo_model_path() == demo.resources_dir() / "demo-model"
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in demo_model.iterdir() if p.is_file()}
    assert files == demo.DEMO_FILES
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", demo.MARKER_FILE):
        assert name in files, name
    assert sum(p.stat().st_size for p in demo_model.iterdir()) < 8 << 20  # a few MB in git
    assert demo.is_demo_path(demo_model) and demo.is_demo_path("demo")
    assert resolve_model_path("demo") == str(demo_model)


def test_a_damaged_or_replaced_copy_is_refused_with_the_fix(demo_model, tmp_path):
    copy = tmp_path / "demo-model"
    shutil.copytree(demo_model, copy)
    assert demo.ensure_demo_model(copy) == copy
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match="is not the file this version ships") as info:
        demo.ensure_demo_model(copy)
    assert "git checkout" in info.value.hint
    (copy / "tokenizer.json").unlink()
    with pytest.raises(InputError, match="incomplete: tokenizer.json is missing"):
        demo.ensure_demo_model(copy)


def test_the_files_are_hashed_once_not_on_every_use(demo_model):
    demo.ensure_demo_model()
    before = demo._verified.cache_info()
    for _ in range(20):
        demo.ensure_demo_model()
    after = demo._verified.cache_info()
    assert after.hits - before.hits == 20 and after.misses == before.misses


def test_summary_comes_from_the_config_alone(demo_model):
    summary = summarize_model("demo")
    assert summary.is_demo and summary.n_blocks == 4 and summary.hidden_size == 128
    assert summary.linear_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_marker_says_what_it_is_how_it_was_made_and_what_nf4_costs(demo_model):
    marker = json.loads((demo_model / demo.MARKER_FILE).read_text())
    assert marker["kind"] == demo.MARKER_KIND and marker["made_by"] == "resources/make_demo_model.py"
    assert marker["stored_dtype"] == "bfloat16" and marker["steps"] == marker["recipe"]["steps"]
    assert marker["heldout_loss"] < marker["ln_vocab"] - 3.0  # well trained, far from a uniform guess
    unseen = marker["perplexity_16x128"]["finetune_corpus"]
    assert unseen["nf4"] > 1.01 * unseen["float32"] > unseen["int8"]  # the recorded 4-bit cost (+2.2 %)


def test_loads_offline_with_auto_classes_and_nf4_costs_perplexity(demo_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from quailora_core.config import QuantConfig
    from quailora_core.model.base import disable_cpu_packing
    from quailora_core.quant.quantizer import bnb_config

    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    model = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32).eval()
    assert isinstance(model, LlamaForCausalLM)
    cfg = model.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (128, 352, 4)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 2) and not cfg.tie_word_embeddings
    assert cfg.vocab_size == len(tokenizer) and None not in (tokenizer.bos_token_id, tokenizer.pad_token_id)
    text = "Return the sum of two numbers."
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    from safetensors import safe_open

    with safe_open(str(demo_model / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # stored in bfloat16

    # The language reference is not in its training text: unseen text in the strict sense.
    batch = pack(finetune_corpus(60_000), tokenizer, samples=16, seq_len=128, heldout_samples=0, seed=0)

    def loss(m) -> float:
        with torch.no_grad():
            return m(input_ids=batch.input_ids, labels=batch.input_ids).loss.item()

    fp = loss(model)
    assert fp < math.log(len(tokenizer)) - 3.0, fp
    nf4 = AutoModelForCausalLM.from_pretrained(
        demo_model, dtype=torch.float32, quantization_config=bnb_config(QuantConfig(bits=4), torch.float32)
    )
    # on CPUs with AVX512-BF16, bitsandbytes' inference repacking fails for widths that are
    # not a multiple of its block size (352 here); every quailora load turns it off
    disable_cpu_packing(nf4)
    assert math.exp(loss(nf4)) > 1.01 * math.exp(fp)  # 4-bit NF4 costs perplexity (measured: +2.2 %)


def test_builder_is_general_and_stops_at_its_time_budget(tmp_path):
    logs: list[str] = []
    stats = demo.build_tiny_llm(
        tmp_path / "micro", hidden_size=32, intermediate_size=64, layers=1, heads=2, kv_heads=1,
        vocab_size=300, steps=50, seq_len=32, batch_size=4, texts=finetune_corpus(20_000),
        on_log=logs.append, max_seconds=0.0, num_threads=1,
    )  # fmt: skip
    assert stats["stopped_early"] and stats["steps"] == 1 and stats["steps_planned"] == 50
    assert any("Stopped after 1 of 50 steps" in line for line in logs)
    assert math.isfinite(stats["heldout_loss"])
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "micro").hidden_size == 32
    assert not demo.is_demo_path(tmp_path / "micro")  # only the shipped model has the marker
