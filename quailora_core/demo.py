"""The built-in demo model: a tiny Llama that ships with the project, the same bytes everywhere.

`resources/demo-model/` (at the top of the repository; installed as the data package
`quailora_resources`) holds an ordinary Hugging Face model folder: a 1.8 M-parameter
Llama (hidden 128, 4 blocks, vocabulary 4000) pretrained by `resources/make_demo_model.py`
on docstrings of the standard library and of large Python packages, stored in bfloat16
(3.6 MB), with its byte-level BPE tokenizer and `quailora_demo.json`, which says what it
is and what quantizing it costs. 4-bit NF4 costs it real perplexity, so the
initialization has a gap to recover on the demo.

Why shipped rather than built on the user's machine: a model trained at first use came
out different on every machine (other CPU, other library versions), so no figure in the
README or in a test could be relied on, and the first Run waited minutes for it. Loading
is instant and offline. `DEMO_FILES` is what this package expects, byte for byte: the
loader checks the files against it (SHA-256, about 10 ms) and refuses a damaged or
replaced copy with the command that restores it; a test checks the same.

`build_tiny_llm` below is the general builder that made it; `benchmarks/pretrain_tiny.py`
calls it with other sizes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import quailora_resources

from quailora_core.config import DEMO_MODEL
from quailora_core.errors import InputError

DEMO_DIR_NAME = quailora_resources.DEMO_MODEL
RESOURCES_PACKAGE = "quailora_resources"  # the top-level resources/ folder, as installed
MARKER_FILE = "quailora_demo.json"
MARKER_KIND = "quailora-demo-model"

# SHA-256 of every file of resources/demo-model/, as resources/make_demo_model.py printed
# them. Change them only together with the files (and the README's demo figures).
DEMO_FILES: dict[str, str] = {
    "README.md": "84ec32b5f462befa806b124c025ad55dc854ad4d76d8a2214e8115a9232be6cc",
    "config.json": "e682ef652572f8b7b23138efe474a414e679041c9dc8f0191f486f6857b0c4b6",
    "generation_config.json": "852b78ce05d6c857925f920b3fc8313ec7d70eca21e820595db1a892267bebd6",
    "model.safetensors": "9d0a228cb68fd102ab8421e1f5ef100f9cd160930a87e398ff2191aa35ddde62",
    "quailora_demo.json": "4d42b7d1ab90fff8b50057dc6d26581b2fcba45416e364f005ef2b190184f26d",
    "tokenizer.json": "a8b4b8281206eb1d395642950c7bbfb3ba1d35ea840e7a4059e14e308e00598b",
    "tokenizer_config.json": "f6a89ae01fbc7e0d3dac74fdc7b58d816baa4bedb9f60593638c54563fdd5d18",
}

LogFn = Callable[[str], None]


def _log(on_log: LogFn | None, message: str) -> None:
    if on_log is not None:
        on_log(message)


def resources_dir() -> Path:
    """The project's top-level `resources/` folder, as installed (`quailora_resources`)."""
    return quailora_resources.ROOT


def demo_model_path() -> Path:
    """Where the shipped demo model lives (not checked: see `ensure_demo_model`)."""
    return resources_dir() / DEMO_DIR_NAME


def is_demo_path(path: str | os.PathLike[str]) -> bool:
    """True for `demo` and for a folder holding the demo model's marker file."""
    if str(path) == DEMO_MODEL:
        return True
    marker = Path(path).expanduser() / MARKER_FILE
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("kind") == MARKER_KIND
    except (OSError, ValueError, AttributeError):
        return False


def _restore_hint(folder: Path) -> str:
    return (
        f"Restore it: in a clone, `git checkout -- {folder.name}` in {folder.parent}; otherwise reinstall "
        "the package. (resources/make_demo_model.py makes a new one, with other figures.)"
    )


@functools.lru_cache(maxsize=8)
def _verified(folder: str, stamp: tuple) -> None:
    """Check the folder's files against DEMO_FILES once per (folder, sizes and mtimes)."""
    path = Path(folder)
    missing = [name for name in DEMO_FILES if not (path / name).is_file()]
    if missing:
        raise InputError(f"The demo model in {path} is incomplete: {', '.join(missing)} is missing.", _restore_hint(path))
    for name, expected in DEMO_FILES.items():
        digest = hashlib.sha256((path / name).read_bytes()).hexdigest()
        if digest != expected:
            raise InputError(
                f"The demo model's {name} in {path} is not the file this version ships "
                f"(SHA-256 {digest[:12]}…, expected {expected[:12]}…; a Git LFS pointer or a damaged copy?).",
                _restore_hint(path),
            )


def ensure_demo_model(folder: str | os.PathLike[str] | None = None) -> Path:
    """The demo model folder (default: the shipped one), checked against `DEMO_FILES`;
    InputError, with the command that restores it, when a file is missing or differs."""
    path = Path(folder) if folder is not None else demo_model_path()
    stamp = tuple(
        (name, st.st_size, st.st_mtime_ns)
        for name in sorted(DEMO_FILES)
        for st in [_stat(path / name)]
    )
    _verified(str(path), stamp)
    return path


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except OSError:
        return os.stat_result((0,) * 10)


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
