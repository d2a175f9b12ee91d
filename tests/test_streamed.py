"""The full-precision weights stay in the checkpoint until their block's turn (model/streamed.py).

What a user relies on: any checkpoint layout (one file or shards; bfloat16, float16 or
float32 on disk; tied or untied head; safetensors or an old .bin) gives the same adapter,
and the engine never holds more than one block's weights at a time, so host memory does
not grow with the number of blocks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import make_config, read_metadata
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from quailora_core.events import LayerResult, Log
from quailora_core.init import pipeline
from quailora_core.init.pipeline import run_init
from quailora_core.model.streamed import load_streamed

VOCAB = 4000  # covers the demo model's tokenizer, which these models borrow


def _llama(tied: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, tie_word_embeddings=tied, bos_token_id=1,
                         eos_token_id=2)  # fmt: skip
    return LlamaForCausalLM(config)


def _save(model: LlamaForCausalLM, folder: Path, demo_model: Path, dtype: torch.dtype, **kwargs) -> Path:
    model.to(dtype).save_pretrained(folder, **kwargs)
    AutoTokenizer.from_pretrained(demo_model).save_pretrained(folder)
    return folder


def _config(model: Path, output: Path):
    return make_config(model, output, calibration__samples=6, calibration__seq_len=32, calibration__heldout_samples=2)


@pytest.mark.parametrize(("dtype", "tied"), [(torch.bfloat16, True), (torch.float16, False), (torch.float32, False)])
def test_a_sharded_checkpoint_gives_the_adapter_of_its_single_file_twin(demo_model, tmp_path, dtype, tied):
    model = _llama(tied)
    single = _save(model, tmp_path / "single", demo_model, dtype)
    sharded = _save(model, tmp_path / "sharded", demo_model, dtype, max_shard_size="40KB")
    assert len(list(sharded.glob("*.safetensors"))) > 3
    adapters = []
    for folder in (single, sharded):
        out = tmp_path / f"adapter-{folder.name}"
        run_init(_config(folder, out))
        assert read_metadata(out)["verification"]["passed"]
        adapters.append(load_file(out / "adapter_model.safetensors"))
    assert adapters[0].keys() == adapters[1].keys()
    for key in adapters[0]:
        assert torch.equal(adapters[0][key], adapters[1][key]), key


def test_the_streamed_model_computes_what_the_loaded_model_computes(demo_model, tmp_path):
    folder = _save(_llama(tied=False), tmp_path / "model", demo_model, torch.bfloat16, max_shard_size="40KB")
    ids = torch.randint(3, 512, (2, 16))
    whole = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    streamed = load_streamed(str(folder), AutoModelForCausalLM, torch.float32, torch.device("cpu"), tmp_path / "off")
    blocks = streamed.blocks.blocks
    assert all(p.device.type == "meta" for p in blocks.parameters())
    assert streamed.model.lm_head.weight.device.type == "meta"  # an untied head is read when it runs
    with torch.no_grad():
        expected = whole(input_ids=ids).logits
        found = streamed.model(input_ids=ids).logits
    torch.testing.assert_close(found, expected, rtol=0, atol=0)
    assert all(p.device.type == "meta" for p in blocks.parameters())  # released again after the pass
    assert not any((tmp_path / "off").iterdir())  # a safetensors checkpoint is read in place


def test_the_engine_holds_one_blocks_weights_at_a_time(demo_model, tmp_path, monkeypatch):
    folder = _save(_llama(tied=False), tmp_path / "model", demo_model, torch.float32)
    loaded = []

    def recording_load(*args, **kwargs):
        loaded.append(load_streamed(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(pipeline, "load_streamed", recording_load)
    with_weights: list[int] = []

    def on_event(event):
        """After each layer's solve: how many blocks hold weights (the untied head: never)."""
        if isinstance(event, LayerResult):
            blocks = loaded[0].blocks.blocks
            with_weights.append(sum(any(p.device.type != "meta" for p in b.parameters()) for b in blocks))
            assert loaded[0].model.lm_head.weight.device.type == "meta"

    run_init(_config(folder, tmp_path / "adapter"), on_event=on_event)
    assert len(with_weights) == 3 * 7
    assert set(with_weights) == {1}


def test_a_bin_checkpoint_still_works_and_says_it_needs_the_memory(demo_model, tmp_path):
    folder = _save(_llama(tied=False), tmp_path / "model", demo_model, torch.float32)
    # an older checkpoint: transformers 5 only writes safetensors, so convert it by hand
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    notes: list[str] = []
    out = tmp_path / "adapter"
    run_init(_config(folder, out), on_event=lambda e: notes.append(e.message) if isinstance(e, Log) else None)
    assert read_metadata(out)["verification"]["passed"]
    assert any("no safetensors files" in note for note in notes), notes
