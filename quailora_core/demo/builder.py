"""Build a tiny Llama from text: a byte-level BPE tokenizer trained on it, then a short
pretraining with the transformers Trainer. `resources/make_demo_model.py` made the shipped
demo model with it; the tests and benchmarks make their small models with it."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quailora_core.demo.shipped import LogFn, _log


# ---------------------------------------------------------------------------- builder
def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `texts`, as a transformers fast tokenizer.

    Special tokens: <unk> 0, <s> 1 (BOS, added in front when add_special_tokens), </s> 2
    (EOS), <pad> 3. Byte-level, so every string round-trips.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=512,
    )


def _blocks(texts: Sequence[str], tokenizer, seq_len: int, seed: int):
    """All full seq_len blocks of the texts (EOS after each document), in a seeded order."""
    import torch

    from quailora_core.sources.packing import cut_blocks, tokenize

    ids, _ = tokenize(texts, tokenizer, eos_after_each=True)
    blocks, _ = cut_blocks(ids, seq_len, tokenizer.eos_token_id)
    n = len(ids) // seq_len
    blocks = blocks[:n]
    return blocks[torch.randperm(n, generator=torch.Generator().manual_seed(seed))], len(ids)


class _Blocks:
    """A map-style dataset of token blocks for the Trainer (labels = input_ids)."""

    def __init__(self, blocks) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return int(self.blocks.shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


def build_tiny_llm(
    out_dir: str | os.PathLike[str],
    hidden_size: int = 128,
    intermediate_size: int = 352,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    vocab_size: int = 2000,
    steps: int = 250,
    seq_len: int = 128,
    batch_size: int = 8,
    lr: float = 3e-3,
    texts: Sequence[str] | None = None,
    seed: int = 0,
    on_log: LogFn | None = None,
    num_threads: int | None = None,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """Train a tokenizer and pretrain a small Llama on `texts`; save both to `out_dir`.

    Uses the transformers `Trainer` (AdamW, cosine schedule, 10 % warmup, no checkpoints,
    no reporting, CPU unless CUDA is present, bf16 on a GPU that supports it). About 5 %
    of the blocks (at most 64) are held out; `heldout_loss` is measured on them after
    training. `num_threads` sets torch's CPU threads for the build (restored afterwards);
    `max_seconds` stops training early once that much training time has passed
    (`steps` then records the steps done, `stopped_early` is True). `texts` defaults to
    `corpus.pretraining_corpus()`. Returns the build statistics (what the demo marker records).
    """
    t0 = time.perf_counter()
    import torch

    previous_threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        return _build(
            Path(out_dir), hidden_size, intermediate_size, layers, heads, kv_heads, vocab_size, steps, seq_len,
            batch_size, lr, texts, seed, on_log, max_seconds, t0,
        )  # fmt: skip
    finally:
        torch.set_num_threads(previous_threads)


def _build(
    out: Path, hidden_size: int, intermediate_size: int, layers: int, heads: int, kv_heads: int, vocab_size: int,
    steps: int, seq_len: int, batch_size: int, lr: float, texts: Sequence[str] | None, seed: int,
    on_log: LogFn | None, max_seconds: float | None, t0: float,
) -> dict[str, Any]:  # fmt: skip
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    t_imports = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if texts is None:
        from quailora_core.sources.corpus import pretraining_corpus

        texts = pretraining_corpus()
    _log(on_log, f"Training a {vocab_size}-token BPE tokenizer on {sum(map(len, texts)):,} characters ...")
    tokenizer = train_tokenizer(texts, vocab_size)
    blocks, n_tokens = _blocks(texts, tokenizer, seq_len, seed)
    n_held = min(64, max(1, len(blocks) // 20))
    if len(blocks) < n_held + batch_size:
        raise ValueError(
            f"only {len(blocks)} blocks of {seq_len} tokens: give more text or a shorter seq_len"
        )
    train, held = blocks[n_held:], blocks[:n_held]
    t_tok = time.perf_counter() - t_imports

    transformers.set_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max(512, seq_len),
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    cuda = torch.cuda.is_available()
    _log(on_log, f"Pretraining a {n_params / 1e6:.2f} M parameter Llama for {steps} steps "
                 f"({batch_size} x {seq_len} tokens) on {'CUDA' if cuda else 'CPU'} ...")  # fmt: skip

    history: list[dict[str, float]] = []
    done = {"steps": 0, "stopped_early": False}
    t_start = time.perf_counter()

    class _Report(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                history.append({"step": state.global_step, "loss": float(logs["loss"])})
                _log(on_log, f"step {state.global_step}/{steps}: loss {logs['loss']:.3f}")

        def on_step_end(self, args, state, control, **kwargs):
            done["steps"] = state.global_step
            if (
                max_seconds is not None
                and time.perf_counter() - t_start > max_seconds
                and state.global_step < steps
            ):
                done["stopped_early"] = True
                control.should_log = True  # record the loss of the last steps
                control.should_training_stop = True

    with tempfile.TemporaryDirectory(prefix="quailora-trainer-") as work:
        args = TrainingArguments(
            output_dir=work,
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=batch_size,
            learning_rate=lr,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, steps // 10),
            weight_decay=0.0,
            logging_steps=max(1, steps // 10),
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=not cuda,
            bf16=cuda and torch.cuda.is_bf16_supported(),
            seed=seed,
            data_seed=seed,
            dataloader_num_workers=0,
        )
        trainer = Trainer(model=model, args=args, train_dataset=_Blocks(train), callbacks=[_Report()])
        trainer.remove_callback(PrinterCallback)  # progress goes to on_log, not stdout
        result = trainer.train()
        heldout_loss = float(trainer.evaluate(eval_dataset=_Blocks(held))["eval_loss"])
    t_train = time.perf_counter() - t_imports - t_tok
    if done["stopped_early"]:
        _log(
            on_log,
            f"Stopped after {done['steps']} of {steps} steps: the {max_seconds:.0f} s budget was spent.",
        )

    model = model.to(torch.float32).cpu().eval()
    model.config.use_cache = True  # the Trainer turned it off for training
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    # Name the class every transformers version knows (v5 writes its new alias TokenizersBackend).
    tok_config = out / "tokenizer_config.json"
    data = json.loads(tok_config.read_text(encoding="utf-8"))
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_config.write_text(json.dumps(data, indent=2), encoding="utf-8")
    final_loss = history[-1]["loss"] if history else float(result.training_loss)
    stats = {
        "architecture": "LlamaForCausalLM",
        "parameters": n_params,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "layers": layers,
        "heads": heads,
        "kv_heads": kv_heads,
        "vocab_size": len(tokenizer),
        "steps": done["steps"],
        "steps_planned": steps,
        "stopped_early": done["stopped_early"],
        "seq_len": seq_len,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "train_tokens": int(train.numel()),
        "corpus_tokens": n_tokens,
        "ln_vocab": math.log(len(tokenizer)),  # the loss of a uniform guess
        "final_loss": final_loss,
        "heldout_loss": heldout_loss,
        "loss_history": history,
        "import_seconds": round(t_imports - t0, 2),
        "tokenizer_seconds": round(t_tok, 2),
        "train_seconds": round(t_train, 2),
        "build_seconds": round(time.perf_counter() - t0, 2),
        "device": "cuda" if cuda else "cpu",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    _log(on_log, f"Done: train loss {final_loss:.3f}, held-out loss {heldout_loss:.3f} "
                 f"(ln vocab = {math.log(len(tokenizer)):.2f}).")  # fmt: skip
    return stats
