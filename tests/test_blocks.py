"""Decoder blocks are found generically, for every common architecture, with no tables."""

from __future__ import annotations

import pytest
import transformers as tf
from tiny_models import CONFIGS

from quailora_core.blocks import find_decoder_blocks, target_linears
from quailora_core.errors import InputError
from quailora_core.model_info import meta_model

EXPECTED_PATH = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "gpt_neox": "gpt_neox.layers",
    "opt": "model.decoder.layers",
    "phi": "model.layers",
}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_blocks_found_for_each_architecture(kind):
    model = meta_model(CONFIGS[kind]())
    blocks = find_decoder_blocks(model)
    assert blocks.path == EXPECTED_PATH[kind]
    assert len(blocks.blocks) == 2
    targets = target_linears(blocks, model, ["all-linear"])
    assert len(targets) >= 4 * 2
    assert all(full.startswith(blocks.path + ".") for _, full, _, _ in targets)


def test_named_targets_match_leaf_names_like_peft():
    model = meta_model(CONFIGS["llama"]())
    blocks = find_decoder_blocks(model)
    names = [full for _, full, _, _ in target_linears(blocks, model, ["q_proj", "down_proj"])]
    assert names == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.mlp.down_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.mlp.down_proj",
    ]


def test_unknown_target_is_refused_with_the_names_that_exist():
    model = meta_model(CONFIGS["llama"]())
    with pytest.raises(InputError, match="matches no layer") as info:
        target_linears(find_decoder_blocks(model), model, ["q_proj", "query_key_value"])
    assert "q_proj" in info.value.hint


def test_conv1d_targets_are_not_linear():
    model = meta_model(tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128))
    with pytest.raises(InputError, match="not an nn.Linear"):
        target_linears(find_decoder_blocks(model), model, ["c_attn"])


def test_model_without_blocks_is_refused():
    import torch.nn as nn

    with pytest.raises(InputError, match="decoder blocks"):
        find_decoder_blocks(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))


def test_model_with_no_linear_layers_says_so():
    model = meta_model(tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128))
    with pytest.raises(InputError, match="no nn.Linear") as info:
        target_linears(find_decoder_blocks(model), model, ["all-linear"])
    assert "Conv1D" in info.value.hint
