"""Tiny models of many architectures, built locally from configs (never downloaded).

These configs are the rows of a conformance matrix: one per model family that people
fine-tune (dense decoders with split or fused projections, Conv1D, ALiBi, sliding-window
attention, mixture-of-experts, multi-head latent attention, vision-language wrappers, and a
non-transformer). Each row must either work end to end or be refused with a clear message,
never fail deep inside the engine. The shapes are the smallest that still exercise each
family's real module layout (hidden size 64, two blocks, vocabulary 128), so a model builds
and saves in well under a second.

Random weights are fine for structural tests (block discovery, exact quantization,
round trips); quality claims use the pretrained demo model or the benchmark models.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import transformers as tf

TINY = dict(vocab_size=128, hidden_size=64, num_attention_heads=4, max_position_embeddings=128)
# Llama-style decoders: 4 query heads of 16 dims over 2 key/value heads (grouped-query attention).
_DECODER = dict(**TINY, intermediate_size=128, num_hidden_layers=2, num_key_value_heads=2)
# Several families default to special token ids far beyond a 128-token vocabulary.
_NO_SPECIAL_TOKENS = dict(pad_token_id=None, bos_token_id=None, eos_token_id=None)
# Sliding windows shorter than the 32-token test sequences, so that sliding layers really mask.
_WINDOW = 16
# Mixture-of-experts: 4 small experts, 2 routed per token.
_MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32)
# Multimodal placeholder ids (by config model_type) get slots after the text vocabulary, so no
# tokenized text can contain one and a text-only forward pass never expects image features.
_MEDIA_TOKENS: dict[str, tuple[str, ...]] = {
    "qwen2_vl": ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"),
    "llava": ("image_token_index",),
    "gemma3": ("image_token_index", "boi_token_index", "eoi_token_index"),
}


def _size_vocab(config: tf.PreTrainedConfig, text_vocab: int) -> tf.PreTrainedConfig:
    """Give `config` `text_vocab` text tokens, followed by its media placeholder tokens."""
    media = _MEDIA_TOKENS.get(config.model_type, ())
    for offset, name in enumerate(media):
        setattr(config, name, text_vocab + offset)
    config.get_text_config().vocab_size = text_vocab + len(media)
    return config


def _gemma3_text() -> tf.Gemma3TextConfig:
    return tf.Gemma3TextConfig(
        **{**_DECODER, "num_hidden_layers": 3},
        head_dim=16, query_pre_attn_scalar=16, sliding_window=_WINDOW,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    )


def _qwen2_vl() -> tf.Qwen2VLConfig:
    text = tf.Qwen2VLTextConfig(
        **_DECODER, **_NO_SPECIAL_TOKENS,
        # Multimodal rotary sections (temporal, height, width) must sum to head_dim / 2 = 8.
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
    )
    vision = tf.Qwen2VLVisionConfig(depth=2, embed_dim=64, hidden_size=64, num_heads=4, patch_size=4)
    return _size_vocab(tf.Qwen2VLConfig(text_config=text, vision_config=vision), 128)


def _llava() -> tf.LlavaConfig:
    vision = tf.CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, projection_dim=64,
    )
    text = tf.LlamaConfig(**_DECODER)
    return _size_vocab(tf.LlavaConfig(vision_config=vision, text_config=text, image_seq_length=16), 128)


def _gemma3_vlm() -> tf.Gemma3Config:
    vision = tf.SiglipVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8,
    )
    # 4x4 patches pooled to 2x2 = 4 soft tokens per image.
    config = tf.Gemma3Config(text_config=_gemma3_text(), vision_config=vision, mm_tokens_per_image=4)
    return _size_vocab(config, 128)


CONFIGS: dict[str, Callable[[], tf.PreTrainedConfig]] = {
    "llama": lambda: tf.LlamaConfig(**_DECODER),
    "llama_tied": lambda: tf.LlamaConfig(**_DECODER, tie_word_embeddings=True),
    "mistral": lambda: tf.MistralConfig(**_DECODER),
    "qwen2": lambda: tf.Qwen2Config(**_DECODER),
    "qwen3": lambda: tf.Qwen3Config(**_DECODER, head_dim=16),
    "gemma2": lambda: tf.Gemma2Config(
        **_DECODER, head_dim=16, query_pre_attn_scalar=16, sliding_window=_WINDOW,
        layer_types=["sliding_attention", "full_attention"],
    ),
    "gemma3_text": _gemma3_text,
    "phi3": lambda: tf.Phi3Config(**_DECODER, **_NO_SPECIAL_TOKENS, original_max_position_embeddings=128),
    "phi": lambda: tf.PhiConfig(**TINY, intermediate_size=128, num_hidden_layers=2),
    "gpt2": lambda: tf.GPT2Config(
        vocab_size=128, n_embd=64, n_head=4, n_layer=2, n_inner=128, n_positions=128, **_NO_SPECIAL_TOKENS,
    ),
    "gptj": lambda: tf.GPTJConfig(
        vocab_size=128, n_embd=64, n_head=4, n_layer=2, n_inner=128, n_positions=128, rotary_dim=8,
        **_NO_SPECIAL_TOKENS,
    ),
    "bloom": lambda: tf.BloomConfig(vocab_size=128, hidden_size=64, n_head=4, n_layer=2),
    # Falcon-7B layout: multi-query attention, parallel attention + MLP, FalconLinear projections.
    "falcon": lambda: tf.FalconConfig(**TINY, num_hidden_layers=2, ffn_hidden_size=128, **_NO_SPECIAL_TOKENS),
    "gpt_neox": lambda: tf.GPTNeoXConfig(**TINY, intermediate_size=128, num_hidden_layers=2),
    "opt": lambda: tf.OPTConfig(
        vocab_size=128, hidden_size=64, num_attention_heads=4, ffn_dim=128, num_hidden_layers=2,
        max_position_embeddings=128, word_embed_proj_dim=64,
    ),
    "stablelm": lambda: tf.StableLmConfig(**_DECODER, **_NO_SPECIAL_TOKENS),
    "starcoder2": lambda: tf.Starcoder2Config(**_DECODER, **_NO_SPECIAL_TOKENS, sliding_window=_WINDOW),
    "olmo2": lambda: tf.Olmo2Config(**_DECODER, **_NO_SPECIAL_TOKENS),
    "cohere": lambda: tf.CohereConfig(**_DECODER, **_NO_SPECIAL_TOKENS),
    # Mixtral has no separate expert width: intermediate_size is each expert's.
    "mixtral": lambda: tf.MixtralConfig(
        **{**_DECODER, "intermediate_size": 32}, num_local_experts=4, num_experts_per_tok=2,
    ),
    "qwen2_moe": lambda: tf.Qwen2MoeConfig(
        **_DECODER, **_NO_SPECIAL_TOKENS, **_MOE, num_experts=4, shared_expert_intermediate_size=64,
    ),
    "qwen3_moe": lambda: tf.Qwen3MoeConfig(**_DECODER, **_NO_SPECIAL_TOKENS, **_MOE, num_experts=4),
    # Multi-head latent attention with small low-rank projections; block 0 dense, block 1 MoE.
    "deepseek_v3": lambda: tf.DeepseekV3Config(
        **{**_DECODER, "num_key_value_heads": 4}, **_NO_SPECIAL_TOKENS, **_MOE,
        n_routed_experts=4, n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1,
        q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
    ),
    "qwen2_vl": _qwen2_vl,
    "llava": _llava,
    "gemma3_vlm": _gemma3_vlm,
    "mamba": lambda: tf.MambaConfig(vocab_size=128, hidden_size=64, state_size=8, num_hidden_layers=2),
}

FAMILIES: dict[str, str] = {
    "llama": "Llama (untied)",
    "llama_tied": "Llama (tied embeddings)",
    "mistral": "Mistral",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "gemma2": "Gemma 2 (sliding + full)",
    "gemma3_text": "Gemma 3 (text, sliding + full)",
    "phi3": "Phi-3 (fused qkv_proj, gate_up_proj)",
    "phi": "Phi",
    "gpt2": "GPT-2 (Conv1D)",
    "gptj": "GPT-J",
    "bloom": "BLOOM (ALiBi)",
    "falcon": "Falcon",
    "gpt_neox": "GPT-NeoX",
    "opt": "OPT",
    "stablelm": "StableLM",
    "starcoder2": "StarCoder2",
    "olmo2": "OLMo 2",
    "cohere": "Cohere Command-R",
    "mixtral": "Mixtral (MoE)",
    "qwen2_moe": "Qwen2-MoE (MoE + shared expert)",
    "qwen3_moe": "Qwen3-MoE (MoE)",
    "deepseek_v3": "DeepSeek-V3 (MLA, dense + MoE)",
    "qwen2_vl": "Qwen2-VL (vision-language)",
    "llava": "LLaVA (CLIP + Llama)",
    "gemma3_vlm": "Gemma 3 (vision-language, SigLIP + Gemma 3)",
    "mamba": "Mamba (state space, no attention)",
}

# The class each family's checkpoints are published with; all others are plain causal LMs.
MODEL_CLASSES: dict[str, type[tf.PreTrainedModel]] = {
    "qwen2_vl": tf.Qwen2VLForConditionalGeneration,
    "llava": tf.LlavaForConditionalGeneration,
    "gemma3_vlm": tf.Gemma3ForConditionalGeneration,
}


def model_class(kind: str) -> type:
    """The class that builds and loads models of `kind` (an auto class for plain causal LMs)."""
    return MODEL_CLASSES.get(kind, tf.AutoModelForCausalLM)


def tiny_config(kind: str, text_vocab: int | None = None) -> tf.PreTrainedConfig:
    """The config of `kind`, resized to `text_vocab` text tokens (a tokenizer's) when given."""
    config = CONFIGS[kind]()
    if text_vocab is not None:
        text = config.get_text_config()
        for owner in (config,) if text is config else (config, text):
            owner.pad_token_id = owner.bos_token_id = owner.eos_token_id = None
        _size_vocab(config, text_vocab)
    return config


def build_tiny(kind: str, text_vocab: int | None = None) -> tf.PreTrainedModel:
    """A randomly initialized model of `kind` (seed with `torch.manual_seed` first)."""
    config = tiny_config(kind, text_vocab)
    cls = MODEL_CLASSES.get(kind)
    return tf.AutoModelForCausalLM.from_config(config) if cls is None else cls(config)


def save_tiny(kind: str, path: Path, seed: int = 0, tokenizer_from: Path | None = None) -> Path:
    """Save a tiny randomly initialized model of `kind` to `path` and return it.

    With `tokenizer_from` (a model folder), that tokenizer is saved alongside and the
    vocabulary is sized to it, so the engine can run on the model end to end. Load the
    result with `model_class(kind).from_pretrained(path)`.
    """
    torch.manual_seed(seed)
    text_vocab = None
    if tokenizer_from is not None:
        tokenizer = tf.AutoTokenizer.from_pretrained(tokenizer_from)
        text_vocab = len(tokenizer)
        tokenizer.save_pretrained(path)
    build_tiny(kind, text_vocab).save_pretrained(path)  # also records config.architectures
    return path
