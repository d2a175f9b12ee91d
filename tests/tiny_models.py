"""Tiny models of several architectures, built locally from configs (never downloaded).

Random weights are fine for structural tests (block discovery, exact quantization,
round trips); quality claims use the pretrained demo model or the benchmark models.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as tf

TINY = dict(vocab_size=128, hidden_size=64, num_attention_heads=4, max_position_embeddings=128)

CONFIGS = {
    "llama": lambda: tf.LlamaConfig(**TINY, intermediate_size=128, num_hidden_layers=2, num_key_value_heads=2),
    "mistral": lambda: tf.MistralConfig(**TINY, intermediate_size=128, num_hidden_layers=2, num_key_value_heads=2),
    "qwen2": lambda: tf.Qwen2Config(**TINY, intermediate_size=128, num_hidden_layers=2, num_key_value_heads=2),
    "gpt_neox": lambda: tf.GPTNeoXConfig(**TINY, intermediate_size=128, num_hidden_layers=2),
    "opt": lambda: tf.OPTConfig(
        vocab_size=128, hidden_size=64, num_attention_heads=4, ffn_dim=128, num_hidden_layers=2,
        max_position_embeddings=128, word_embed_proj_dim=64,
    ),
    "phi": lambda: tf.PhiConfig(**TINY, intermediate_size=128, num_hidden_layers=2),
}


def save_tiny(kind: str, path: Path, seed: int = 0, tokenizer_from: Path | None = None) -> Path:
    """Save a tiny randomly initialized causal LM of `kind` to `path` and return it.

    With `tokenizer_from` (a model folder), that tokenizer is saved alongside and the
    vocabulary is sized to it, so the engine can run on the model end to end.
    """
    torch.manual_seed(seed)
    config = CONFIGS[kind]()
    if tokenizer_from is not None:
        tokenizer = tf.AutoTokenizer.from_pretrained(tokenizer_from)
        config.vocab_size = len(tokenizer)
        config.pad_token_id = config.bos_token_id = config.eos_token_id = None
        tokenizer.save_pretrained(path)
    model = tf.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    return path
