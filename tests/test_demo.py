"""The demo model: built locally (no network), a normal Hugging Face folder, actually trained,
cached (a second call is instant), and the general builder honours its time budget."""

from __future__ import annotations

import json
import math
import time

import torch

from quailora_core import demo
from quailora_core.corpus import finetune_corpus
from quailora_core.data import pack
from quailora_core.model_info import resolve_model_path, summarize_model


def test_demo_model_is_built_once_into_the_cache(demo_model, quailora_cache):
    assert demo_model == quailora_cache / demo.DEMO_DIR_NAME == demo.demo_model_path()
    assert demo.is_demo_path(demo_model) and demo.is_demo_path("demo")
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        demo.MARKER_FILE,
    ):
        assert (demo_model / name).is_file(), name
    # atomic build: no temporary folder left next to it
    assert [p.name for p in quailora_cache.iterdir() if p.name.startswith(".")] == []

    stamp = (demo_model / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert demo.ensure_demo_model() == demo_model
    assert time.perf_counter() - start < 1.0
    assert (demo_model / "model.safetensors").stat().st_mtime_ns == stamp
    assert resolve_model_path("demo") == str(demo_model)


def test_demo_summary_comes_from_the_config_alone(demo_model):
    summary = summarize_model("demo")
    assert summary.is_demo and summary.n_blocks == demo.DEMO_RECIPE["layers"]
    assert summary.linear_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_marker_says_what_it_is_and_that_it_learned(demo_model):
    marker = json.loads((demo_model / demo.MARKER_FILE).read_text())
    assert marker["kind"] == demo.MARKER_KIND and "built locally" in marker["description"]
    assert marker["hidden_size"] == 128 and marker["layers"] == 4 and marker["vocab_size"] == 2000
    assert marker["steps"] == demo.DEMO_RECIPE["steps"]  # no time cap: the same model everywhere
    assert marker["final_loss"] < marker["ln_vocab"] - 1.5
    assert marker["heldout_loss"] < marker["ln_vocab"] - 1.5
    assert marker["build_seconds"] > 0  # recorded; how long it takes is a benchmark, not a test


def test_loads_offline_with_auto_classes_and_predicts_unseen_text(demo_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    model = AutoModelForCausalLM.from_pretrained(demo_model).eval()
    assert isinstance(model, LlamaForCausalLM)
    cfg = model.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (128, 352, 4)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.max_position_embeddings) == (4, 2, 512)
    assert not cfg.tie_word_embeddings and cfg.vocab_size == len(tokenizer) == 2000
    assert None not in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    text = "Return the sum of two numbers."
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text

    # The language reference is not in its training text: held-out in the strict sense.
    batch = pack(finetune_corpus(30_000), tokenizer, samples=8, seq_len=128, heldout_samples=0, seed=0)
    with torch.no_grad():
        loss = model(input_ids=batch.input_ids, labels=batch.input_ids).loss.item()
    assert loss < math.log(len(tokenizer)) - 1.0, loss


def test_builder_is_general_and_stops_at_its_time_budget(tmp_path, demo_model):
    # demo_model first: the Trainer and its imports are already warm, so this takes seconds.
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
    assert not demo.is_demo_path(tmp_path / "micro")  # only ensure_demo_model writes the marker
