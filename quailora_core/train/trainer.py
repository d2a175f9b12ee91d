"""Fine-tune a QuAILoRA-initialized adapter: `quailora train` and `python -m quailora_core.train`.

`run_train(config, on_event, cancel)` is the entry point the CLI, the GUI (through the
exported run's command in a child process) and the tests call. It first runs every
check that needs no weights, so that bad input is one clear InputError before anything
heavy happens:

* the adapter folder holds a peft adapter and the `quailora.json` that `quailora init` wrote;
* the run file's quantization settings agree with the ones the adapter was computed for
  (the adapter only helps with that exact quantizer);
* the base model has the recorded architecture, and the recorded fingerprint of its first
  targeted weight (read straight from the checkpoint file, no model built);
* the training data has the fields its format needs, and the settings make sense.

Then it loads the base with the `BitsAndBytesConfig` rebuilt from the adapter's record
(`quantize.bnb_config`), applies `peft.prepare_model_for_kbit_training` (gradient
checkpointing on CUDA), loads the adapter with `PeftModel.from_pretrained(...,
is_trainable=True)` and trains with the transformers `Trainer`: bf16 and paged 8-bit AdamW
on CUDA, float32 and AdamW on CPU; validation loss and perplexity every `eval_interval`
steps; checkpoints every `save_interval` steps (the last two kept); `resume` continues from
the newest complete checkpoint. A `TrainerCallback` turns the Trainer's logs into
`TrainStep` / `EvalResult` events and stops at the next step end when the `CancelToken`
is cancelled (saving a checkpoint there, so that `--resume` continues from it).

The output folder holds the Trainer's `checkpoint-N/` folders, `adapter/` (the trained peft
adapter with `quailora.json` plus a "training" section, renamed into place only when
complete) and `metrics.json` (written last: its presence means the run finished).

Relative paths in a run file are relative to the run file's folder (`RunConfig.load`), so
a run folder written by `quailora export-run` works from any working directory.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from quailora_core.adapter.writer import METADATA_FILE, model_card, read_metadata
from quailora_core.config import DEMO_MODEL, RunConfig, TrainSettings
from quailora_core.errors import Cancelled, InputError, QuailoraError
from quailora_core.events import (
    CancelToken,
    EvalResult,
    EventCallback,
    Finished,
    Log,
    Stage,
    TrainStep,
    ignore_events,
)
from quailora_core.files import atomic_dir, atomic_write_text
from quailora_core.model.base import load_quantized_base, recorded_quantization
from quailora_core.sources.packing import pack_all
from quailora_core.sources.training_data import TRAIN_FORMATS, TrainingData, load_training_data

FINAL_ADAPTER = "adapter"
METRICS_FILE = "metrics.json"
RUN_RECORD = "training_run.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
IGNORE_INDEX = -100


class TrainingCancelled(Cancelled):
    """Training stopped through its CancelToken; a checkpoint was saved at that step."""

    def __init__(self, step: int, output: str) -> None:
        QuailoraError.__init__(
            self,
            f"Training was cancelled at step {step}; a checkpoint was saved in {output}.",
            "Run the same command with --resume to continue from it.",
        )
        self.step, self.output = step, output


@dataclass
class TrainResult:
    output_dir: str  # the training output folder (checkpoints, adapter/, metrics.json)
    adapter_dir: str  # output_dir/adapter: the trained adapter
    global_step: int
    metrics: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- run files and paths
def adapter_dir(config: RunConfig) -> str:
    """The initialized adapter a run trains: `[train] adapter`, else the run's `output`."""
    return config.train.adapter or config.output


def output_dir(config: RunConfig) -> str:
    """The training output folder: `[train] output`, else the adapter folder + '-trained'."""
    if config.train.output:
        return config.train.output
    adapter = Path(adapter_dir(config)).expanduser()
    return str(adapter.with_name(adapter.name + "-trained"))


def config_from_adapter(adapter: str) -> RunConfig:
    """The run an adapter was initialized with (from its quailora.json), training that adapter."""
    meta = read_adapter(adapter)
    config = RunConfig.from_dict(meta.get("run_config") or {})
    base = meta["base_model"]
    config.model.path = DEMO_MODEL if base.get("reference") == DEMO_MODEL else base.get("path", config.model.path)
    config.train = TrainSettings(adapter=str(Path(adapter).expanduser().resolve()))
    return config


# ---------------------------------------------------------------------------- cheap checks
def check_settings(t: TrainSettings) -> None:
    """Raise InputError on the first training setting that cannot work."""
    if t.data_format not in TRAIN_FORMATS:
        raise InputError(f"Unknown data format {t.data_format!r}.", f"Use one of {', '.join(TRAIN_FORMATS)}.")
    for name, usual in (("batch_size", 4), ("gradient_accumulation", 1), ("eval_interval", 50),
                        ("save_interval", 50), ("log_interval", 1)):  # fmt: skip
        value = getattr(t, name)
        if not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a whole number of at least 1, got {value!r}.", f"The usual value is {usual}.")
    if not isinstance(t.seq_len, int) or t.seq_len < 8:
        raise InputError(f"seq_len must be at least 8, got {t.seq_len!r}.", "The usual value is 512.")
    if not t.epochs >= 0:
        raise InputError(f"epochs must be >= 0, got {t.epochs}.", "Use 0 to train for max_steps steps.")
    if t.epochs == 0 and (not isinstance(t.max_steps, int) or t.max_steps < 1):
        raise InputError(f"max_steps must be at least 1, got {t.max_steps!r}.", "Use --max-steps 100, or --epochs 1.")
    if not (isinstance(t.learning_rate, (int, float)) and math.isfinite(t.learning_rate) and t.learning_rate > 0):
        raise InputError(f"learning_rate must be a positive number, got {t.learning_rate!r}.", "QLoRA uses 1e-4 to 2e-4.")
    if not 0 <= t.validation_fraction < 1:
        raise InputError(
            f"validation_fraction must be in [0, 1), got {t.validation_fraction}.", "The usual value is 0.05."
        )
    if not isinstance(t.warmup_steps, int) or t.warmup_steps < 0:
        raise InputError(f"warmup_steps must be >= 0, got {t.warmup_steps!r}.", "Use 0 or a few percent of the steps.")


def read_adapter(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The quailora.json of an initialized adapter folder, after checking the folder."""
    folder = Path(path).expanduser()
    hint = "Run `quailora init` first, or point [train] adapter / --adapter at its output folder."
    if not str(path):
        raise InputError("No adapter folder given.", hint)
    if not folder.is_dir():
        raise InputError(f"Adapter folder {str(path)!r} does not exist.", hint)
    if not (folder / "adapter_config.json").is_file():
        raise InputError(f"{str(path)!r} is not a peft adapter folder (it has no adapter_config.json).", hint)
    if not (folder / METADATA_FILE).is_file():
        raise InputError(
            f"{str(path)!r} has no {METADATA_FILE}: it was not written by `quailora init`.",
            "Train adapters that `quailora init` wrote; their quailora.json records the quantization.",
        )
    try:
        meta = read_metadata(folder)
    except (OSError, ValueError) as exc:
        raise InputError(f"{METADATA_FILE} in {str(path)!r} cannot be read: {exc}.", "Run `quailora init` again.") from None
    missing = [k for k in ("base_model", "quantization", "targets") if k not in meta]
    if missing:
        raise InputError(f"{METADATA_FILE} in {str(path)!r} lacks {', '.join(missing)}.", "Run `quailora init` again.")
    return meta


def check_quantization(config: RunConfig, meta: dict[str, Any], adapter: str) -> None:
    """Refuse run-file quantization settings that differ from the adapter's (`auto` follows it)."""
    q, rec = config.quantization, meta["quantization"]
    diffs = []
    if q.bits != rec["bits"]:
        diffs.append(f"bits {q.bits} vs {rec['bits']}")
    elif q.bits == 4:
        for name in ("quant_type", "double_quant", "quant_storage", "blocksize"):
            if name in rec and getattr(q, name) != rec[name]:
                diffs.append(f"{name} {getattr(q, name)!r} vs {rec[name]!r}")
        if q.compute_dtype != "auto" and q.compute_dtype != rec.get("compute_dtype"):
            diffs.append(f"compute_dtype {q.compute_dtype!r} vs {rec.get('compute_dtype')!r}")
    if config.model.dtype != "auto" and config.model.dtype != rec["load_dtype"]:
        diffs.append(f"model dtype {config.model.dtype!r} vs {rec['load_dtype']!r}")
    if diffs:
        raise InputError(
            f"The run's quantization differs from what adapter {adapter!r} was computed for: "
            f"{'; '.join(diffs)} (run vs adapter).",
            "The initialization only helps with its own quantizer: fix [quantization] / [model] dtype, "
            "or run `quailora init` again with the new settings.",
        )


def read_base_weight(model_path: str, name: str):
    """The tensor `name + '.weight'` straight from the model's checkpoint files (safetensors or
    a torch .bin), without building the model; None when it cannot be found there."""
    import torch

    folder = Path(model_path).expanduser()
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            from quailora_core.sources.references import offline

            folder = Path(
                snapshot_download(model_path, allow_patterns=["*.json", "*.safetensors"], local_files_only=offline())
            )
        except Exception:
            return None
    keys = [f"{name}.weight", f"{name.removeprefix('model.')}.weight", f"model.{name}.weight"]
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.is_file() or single.is_file():
        from safetensors import safe_open

        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
            files = {weight_map[k] for k in keys if k in weight_map}
            paths = [folder / f for f in sorted(files)]
        else:
            paths = [single]
        for path in paths:
            with safe_open(str(path), framework="pt") as f:
                for key in keys:
                    if key in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                        return f.get_tensor(key)
        return None
    for path in sorted(folder.glob("pytorch_model*.bin")):
        state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
        for key in keys:
            if key in state:
                return state[key]
    return None


def check_base(model_path: str, meta: dict[str, Any], adapter: str, trust_remote_code: bool = False) -> list[str]:
    """Refuse a base whose architecture or first-target fingerprint differs from the adapter's
    record. Returns warnings (e.g. a fingerprint that could not be checked)."""
    import torch

    from quailora_core.init.pipeline import weight_fingerprint
    from quailora_core.model.info import load_model_config

    rec = meta["base_model"]
    hf_config = load_model_config(model_path, trust_remote_code)
    arch = (getattr(hf_config, "architectures", None) or [""])[0]
    hint = "Use the base model the adapter was initialized on (see base_model in its quailora.json)."
    if rec.get("architecture") and arch and arch != rec["architecture"]:
        raise InputError(
            f"Model {model_path!r} is a {arch}, but adapter {adapter!r} was initialized on a {rec['architecture']}.",
            hint,
        )
    first = meta["targets"][0]
    weight = read_base_weight(model_path, first)
    if weight is None or not rec.get("fingerprint"):
        return [f"could not read {first}.weight from {model_path!r}'s checkpoint files: the base weights "
                "are not verified against the adapter's fingerprint"]  # fmt: skip
    _, dtype_name = recorded_quantization(meta)
    found = weight_fingerprint(weight.to(getattr(torch, dtype_name)))
    if found != rec["fingerprint"]:
        raise InputError(
            f"Model {model_path!r} is not the base adapter {adapter!r} was initialized on: the weights of "
            f"{first} differ (fingerprint {found}, adapter recorded {rec['fingerprint']} for {rec.get('path')!r}).",
            hint,
        )
    return []


def checkpoints(output: str | os.PathLike[str]) -> list[Path]:
    """Complete Trainer checkpoints in `output` (trainer_state.json is written last), oldest first."""
    folder = Path(output)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir() and (p / "trainer_state.json").is_file() and (p / "adapter_model.safetensors").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def _check_output(config: RunConfig, adapter: str, fingerprint: str | None) -> tuple[Path, Path | None]:
    """The output folder (checked) and, when resuming, the checkpoint to resume from."""
    t = config.train
    out = Path(output_dir(config)).expanduser().resolve()
    a = Path(adapter).expanduser().resolve()
    if out == a or a in out.parents:
        raise InputError(f"Training output {str(out)!r} is inside the adapter folder.", "Choose another --output.")
    if out.exists() and not out.is_dir():
        raise InputError(f"Training output {str(out)!r} is a file.", "Choose a folder path with --output.")
    if not t.resume:
        # under `accelerate launch` the main process may already have started writing here
        if out.is_dir() and any(out.iterdir()) and _is_main_process():
            raise InputError(
                f"Training output folder {str(out)!r} exists and is not empty.",
                "Use --resume to continue the run in it, or choose another --output.",
            )
        return out, None
    found = checkpoints(out)
    if not found:
        raise InputError(
            f"Nothing to resume: {str(out)!r} holds no complete checkpoint.",
            "Run without --resume to start, or point --output at the run's folder.",
        )
    record = out / RUN_RECORD
    if record.is_file() and fingerprint:
        with_fp = json.loads(record.read_text(encoding="utf-8")).get("base_fingerprint")
        if with_fp and with_fp != fingerprint:
            raise InputError(
                f"The run in {str(out)!r} trained an adapter for another base model.",
                "Resume with the run file that started it, or choose another --output.",
            )
    last = found[-1]
    step = int(json.loads((last / "trainer_state.json").read_text(encoding="utf-8")).get("global_step", 0))
    if t.epochs == 0 and step >= t.max_steps:
        raise InputError(
            f"The last checkpoint ({last.name}) is already at step {step}, max_steps is {t.max_steps}.",
            f"Raise --max-steps above {step} to train further.",
        )
    return out, last


# ---------------------------------------------------------------------------- tokenization
def _bos(tokenizer) -> list[int]:
    """[BOS] when the tokenizer adds one by default (as its own encoding of a text would start)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    ids = tokenizer("a")["input_ids"]
    return [bos] if ids and ids[0] == bos else []


def _segments(tokenizer, messages: list[dict[str, str]]) -> tuple[list[tuple[str, bool]], str]:
    """The conversation as text pieces, each marked trainable (assistant turns) or not.

    With a chat template: the template's rendering, cut where each assistant turn starts
    (the rendering of the turns before it with the generation prompt) and ends (the rendering
    up to and including it). Without one (or with a template whose renderings are not
    prefixes of each other): each message's content followed by a blank line, the prompt
    "prompt\\n\\nresponse" layout. Returns (pieces, layout): layout is "chat template",
    "plain" (no template) or "plain (template not prefix-consistent)".
    """
    layout = "plain"
    if getattr(tokenizer, "chat_template", None):
        render = tokenizer.apply_chat_template
        try:
            full = render(messages, tokenize=False)
        except Exception as exc:  # jinja errors, templates that raise on odd role orders
            raise InputError(
                f"The tokenizer's chat template cannot render a conversation: {str(exc).splitlines()[0]}",
                "Check the roles and their order in the data (e.g. user and assistant alternating).",
            ) from None
        pieces: list[tuple[str, bool]] = []
        pos = 0
        ok = isinstance(full, str)
        for i, m in enumerate(messages):
            if m["role"] != "assistant" or not ok:
                continue
            try:
                start = render(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
                end = render(messages[: i + 1], tokenize=False)
            except Exception:
                ok = False
                break
            if not (full.startswith(start) and full.startswith(end) and pos <= len(start) <= len(end)):
                ok = False
                break
            pieces += [(full[pos : len(start)], False), (full[len(start) : len(end)], True)]
            pos = len(end)
        if ok:
            return [*pieces, (full[pos:], False)], "chat template"
        layout = "plain (template not prefix-consistent)"
    out = []
    for i, m in enumerate(messages):
        sep = "" if i == len(messages) - 1 else "\n\n"
        out.append((m["content"] + sep, m["role"] == "assistant"))
    return out, layout


def encode_conversation(tokenizer, messages: list[dict[str, str]], seq_len: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation, cut to seq_len; labels are -100 except on the
    assistant turns (and, without a chat template, the EOS after a final assistant turn)."""
    ids, labels, _ = _encode_full(tokenizer, messages)
    return ids[:seq_len], labels[:seq_len]


def _encode_full(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int], str]:
    segments, layout = _segments(tokenizer, messages)
    templated = layout == "chat template"
    ids: list[int] = [] if templated else list(_bos(tokenizer))
    labels: list[int] = [IGNORE_INDEX] * len(ids)
    for text, trainable in segments:
        if not text:
            continue
        piece = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        ids += piece
        labels += piece if trainable else [IGNORE_INDEX] * len(piece)
    eos = getattr(tokenizer, "eos_token_id", None)
    if not templated and eos is not None and messages[-1]["role"] == "assistant":
        ids.append(eos)
        labels.append(eos)
    return ids, labels, layout


@dataclass
class _Examples:
    rows: list[dict[str, list[int]]]
    summary: dict[str, Any]


def encode(data: TrainingData, tokenizer, seq_len: int) -> _Examples:
    """Tokenized training examples: packed blocks for text, one example per conversation."""
    if data.kind == "text":
        ids, mask = pack_all(data.texts, tokenizer, seq_len)
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        rows = [
            {"input_ids": i, "attention_mask": m, "labels": lab}
            for i, m, lab in zip(ids.tolist(), mask.tolist(), labels.tolist(), strict=True)
        ]
        return _Examples(rows, {"documents": len(data.texts), "blocks": len(rows)})
    rows, dropped, truncated = [], 0, 0
    layouts: dict[str, int] = {}
    for messages in data.conversations:
        ids, labels, layout = _encode_full(tokenizer, messages)
        layouts[layout] = layouts.get(layout, 0) + 1
        truncated += len(ids) > seq_len
        ids, labels = ids[:seq_len], labels[:seq_len]
        if all(label == IGNORE_INDEX for label in labels):
            dropped += 1
            continue
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    if not rows:
        raise InputError(
            f"No example of {data.source!r} has a response within the first {seq_len} tokens.",
            "Raise seq_len (--seq-len), or shorten the prompts.",
        )
    summary = {"examples": len(data.conversations), "dropped": dropped, "truncated": truncated, "layout": layouts}
    return _Examples(rows, summary)


def _split(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out round(fraction * n) rows (at least 1 when fraction > 0 and n >= 2), seeded."""
    import torch

    n = len(rows)
    n_val = min(n - 1, max(1, round(fraction * n))) if fraction > 0 and n >= 2 else 0
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return [rows[i] for i in order[n_val:]], [rows[i] for i in order[:n_val]]


def _count(rows: list[dict[str, list[int]]]) -> tuple[int, int]:
    tokens = sum(sum(r["attention_mask"]) for r in rows)
    trained = sum(sum(1 for x in r["labels"][1:] if x != IGNORE_INDEX) for r in rows)
    return tokens, trained


# ---------------------------------------------------------------------------- the plan
@dataclass
class _Plan:
    """Everything the cheap checks found; what the heavy part needs."""

    config: RunConfig
    adapter: Path
    meta: dict[str, Any]
    model_path: str
    output: Path
    resume_from: Path | None
    tokenizer: Any
    train_rows: list
    eval_rows: list
    data_summary: dict[str, Any]


def preflight_train(config: RunConfig, on_event: EventCallback = ignore_events) -> _Plan:
    """All checks that need no model weights in memory; raises InputError, writes nothing."""
    from quailora_core.model.info import resolve_model_path

    t = config.train
    check_settings(t)
    adapter = adapter_dir(config)
    meta = read_adapter(adapter)
    check_quantization(config, meta, adapter)
    model_path = resolve_model_path(config.model.path)
    for warning in check_base(model_path, meta, adapter, config.model.trust_remote_code):
        on_event(Log("warning", warning))
    output, resume_from = _check_output(config, adapter, meta["base_model"].get("fingerprint"))
    if not t.data:
        raise InputError("No training data given.", "Set [train] data in the run file, or use --data PATH.")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=config.model.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise InputError(f"The tokenizer of {model_path!r} cannot be loaded: {str(exc).splitlines()[0]}", "") from None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise InputError(f"The tokenizer of {model_path!r} has neither a pad nor an EOS token.", "")
        tokenizer.pad_token = tokenizer.eos_token
    data = load_training_data(t.data, t.data_format, t.text_column)
    examples = encode(data, tokenizer, t.seq_len)
    summary: dict[str, Any] = {"source": t.data, "format": data.kind, "fields": data.fields, **examples.summary}
    if t.validation_data:
        vdata = load_training_data(t.validation_data, t.data_format, t.text_column)
        train_rows, eval_rows = examples.rows, encode(vdata, tokenizer, t.seq_len).rows
        summary["validation"] = t.validation_data
    else:
        train_rows, eval_rows = _split(examples.rows, t.validation_fraction, t.seed)
        summary["validation"] = f"{len(eval_rows)} held out ({t.validation_fraction:g})" if eval_rows else "none"
        if t.validation_fraction > 0 and not eval_rows:
            on_event(Log("warning", "only one training example: no validation split, no eval loss"))
    summary["train_examples"], summary["eval_examples"] = len(train_rows), len(eval_rows)
    summary["train_tokens"], summary["train_target_tokens"] = _count(train_rows)
    fallbacks = examples.summary.get("layout", {}).get("plain (template not prefix-consistent)", 0)
    if fallbacks:
        on_event(Log("warning", f"{fallbacks} conversations use the plain prompt/response layout: the chat "
                                "template's renderings of their turns are not prefixes of each other"))  # fmt: skip
    if data.kind == "prompt_response" and examples.summary["dropped"]:
        on_event(Log("warning", f"{examples.summary['dropped']} examples dropped: their response starts after "
                                f"seq_len={t.seq_len} tokens"))  # fmt: skip
    return _Plan(config, Path(adapter).expanduser().resolve(), meta, model_path, output, resume_from, tokenizer,
                 train_rows, eval_rows, summary)  # fmt: skip


# ---------------------------------------------------------------------------- the run
def run_train(
    config: RunConfig, on_event: EventCallback = ignore_events, cancel: CancelToken | None = None
) -> TrainResult:
    """Fine-tune the adapter of `config` (see the module docstring). Paths in `config` are
    taken as they are (relative to the working directory); `RunConfig.load` resolves a run
    file's paths against its folder."""
    cancel = cancel or CancelToken()
    on_event(Stage("load"))
    plan = preflight_train(config, on_event)
    return _Training(plan, on_event, cancel).run()


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


class _Training:
    def __init__(self, plan: _Plan, on_event: EventCallback, cancel: CancelToken) -> None:
        self.plan, self.emit, self.cancel = plan, on_event, cancel

    def run(self) -> TrainResult:
        import datasets
        import torch
        import transformers
        from peft import PeftModel, prepare_model_for_kbit_training
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments
        from transformers.trainer_callback import PrinterCallback

        plan, t = self.plan, self.plan.config.train
        started = time.perf_counter()
        cuda = torch.cuda.is_available()
        bf16 = cuda and torch.cuda.is_bf16_supported()
        optim = "paged_adamw_8bit" if cuda else "adamw_torch"
        if self.cancel.cancelled:
            raise Cancelled()
        transformers.set_seed(t.seed)
        device = None
        if cuda:
            from accelerate import PartialState

            device = PartialState().local_process_index
        model = load_quantized_base(plan.model_path, plan.meta, device, plan.config.model.trust_remote_code)
        model.config.use_cache = False
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cuda, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
        model = PeftModel.from_pretrained(model, str(plan.adapter), is_trainable=True)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.emit(Log("info", (
            f"{plan.data_summary['train_examples']} training and {plan.data_summary['eval_examples']} validation "
            f"examples ({plan.data_summary['format']}); {trainable:,} trainable parameters; "
            f"{'CUDA' if cuda else 'CPU'}, {'bf16' if bf16 else 'fp16' if cuda else 'float32'}, {optim}"
            + (f"; resuming from {plan.resume_from.name}" if plan.resume_from else "")
        )))  # fmt: skip
        if self.cancel.cancelled:
            raise Cancelled()
        plan.output.mkdir(parents=True, exist_ok=True)
        if not plan.resume_from and _is_main_process():
            _write_json(plan.output / RUN_RECORD, {
                "adapter": str(plan.adapter),
                "base_model": plan.model_path,
                "base_fingerprint": plan.meta["base_model"].get("fingerprint"),
                "started": _now(),
                "run_config": plan.config.to_dict(),
            })  # fmt: skip
        train_ds = datasets.Dataset.from_list(plan.train_rows)
        eval_ds = datasets.Dataset.from_list(plan.eval_rows) if plan.eval_rows else None
        has_eval = eval_ds is not None
        args = TrainingArguments(
            output_dir=str(plan.output),
            max_steps=t.max_steps if t.epochs == 0 else -1,
            num_train_epochs=t.epochs if t.epochs > 0 else 1.0,
            per_device_train_batch_size=t.batch_size,
            per_device_eval_batch_size=t.batch_size,
            gradient_accumulation_steps=t.gradient_accumulation,
            learning_rate=t.learning_rate,
            warmup_steps=t.warmup_steps,
            logging_steps=t.log_interval,
            eval_strategy="steps" if has_eval else "no",
            eval_steps=t.eval_interval if has_eval else None,
            eval_on_start=has_eval and plan.resume_from is None,
            save_strategy="steps",
            save_steps=t.save_interval,
            save_total_limit=2,
            report_to="none",
            disable_tqdm=True,
            use_cpu=not cuda,
            bf16=bf16,
            fp16=cuda and not bf16,
            optim=optim,
            seed=t.seed,
            data_seed=t.seed,
            label_names=["labels"],
            remove_unused_columns=False,
            include_num_input_tokens_seen="non_padding",
            ddp_find_unused_parameters=False,
            dataloader_num_workers=0,
        )
        bridge = EventBridge(self.emit, self.cancel, cuda)
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            data_collator=DataCollatorForSeq2Seq(plan.tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX),
            callbacks=[bridge],
        )
        trainer.remove_callback(PrinterCallback)  # progress goes through events, not stdout
        self.emit(Stage("train", total=0))
        output = trainer.train(resume_from_checkpoint=str(plan.resume_from) if plan.resume_from else None)
        state = trainer.state
        if bridge.cancelled_at is not None:
            raise TrainingCancelled(bridge.cancelled_at, str(plan.output))
        eval_metrics: dict[str, Any] = {}
        if has_eval:
            last = [h for h in state.log_history if "eval_loss" in h]
            if last and last[-1].get("step") == state.global_step:
                eval_metrics = {k: v for k, v in last[-1].items() if k.startswith("eval_")}
            else:
                eval_metrics = trainer.evaluate()
        self.emit(Stage("export"))
        metrics = self._metrics(state, output.metrics, eval_metrics, started, cuda, bf16, optim)
        if trainer.is_world_process_zero():
            self._write(trainer.model, metrics)
        trainer.accelerator.wait_for_everyone()
        result = TrainResult(str(plan.output), str(plan.output / FINAL_ADAPTER), state.global_step, metrics)
        self.emit(Finished(result.output_dir, {k: v for k, v in metrics.items() if k != "log_history"}))
        return result

    def _metrics(self, state, train_metrics, eval_metrics, started, cuda, bf16, optim) -> dict[str, Any]:
        history = list(state.log_history)
        losses = [h for h in history if "loss" in h]
        evals = [h for h in history if "eval_loss" in h]
        eval_loss = eval_metrics.get("eval_loss")
        first_eval = evals[0] if evals else None
        return {
            "global_step": state.global_step,
            "max_steps": state.max_steps,
            "epoch": state.epoch,
            "train_loss": losses[-1]["loss"] if losses else None,
            "train_loss_mean": train_metrics.get("train_loss"),
            "eval_loss": eval_loss,
            "perplexity": perplexity(eval_loss) if eval_loss is not None else None,
            "first_eval_step": first_eval["step"] if first_eval else None,
            "first_eval_loss": first_eval["eval_loss"] if first_eval else None,
            "first_perplexity": perplexity(first_eval["eval_loss"]) if first_eval else None,
            "tokens_seen": state.num_input_tokens_seen,
            "train_runtime": train_metrics.get("train_runtime"),
            "wall_seconds": time.perf_counter() - started,
            "resumed_from": self.plan.resume_from.name if self.plan.resume_from else None,
            "device": "cuda" if cuda else "cpu",
            "precision": "bf16" if bf16 else "fp16" if cuda else "float32",
            "optim": optim,
            "data": self.plan.data_summary,
            "finished": _now(),
            "log_history": history,
        }

    def _write(self, model, metrics: dict[str, Any]) -> None:
        """The trained adapter (atomically, replacing an earlier one) then metrics.json."""
        plan = self.plan
        meta = dict(plan.meta)
        meta["training"] = {
            "initialized_adapter": str(plan.adapter),
            "base_model": plan.model_path,
            "settings": asdict(plan.config.train),
            **{k: v for k, v in metrics.items() if k != "log_history"},
        }
        with atomic_dir(plan.output / FINAL_ADAPTER, overwrite=True) as tmp:
            model.save_pretrained(str(tmp))
            (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
            (tmp / "README.md").write_text(model_card(meta) + _training_card(meta["training"]), encoding="utf-8")
        _write_json(plan.output / METRICS_FILE, metrics)


def _training_card(tr: dict[str, Any]) -> str:
    def fmt(x: Any) -> str:
        return f"{x:.4f}" if isinstance(x, float) else "n/a"

    return (
        "\n## Fine-tuning\n\n"
        f"Fine-tuned from the initialization above with `quailora train` for {tr['global_step']} steps on "
        f"{tr['data']['source']!r} ({tr['data']['format']}): training loss {fmt(tr['train_loss'])}, "
        f"validation loss {fmt(tr['first_eval_loss'])} -> {fmt(tr['eval_loss'])} "
        f"(perplexity {fmt(tr['first_perplexity'])} -> {fmt(tr['perplexity'])}).\n"
    )


class EventBridge(TrainerCallback):
    """Trainer logs -> TrainStep / EvalResult events; CancelToken -> stop at the step end, with a
    checkpoint there so that --resume continues from it. Only the main process emits."""

    def __init__(self, emit: EventCallback, cancel: CancelToken, cuda: bool) -> None:
        self.emit, self.cancel, self.cuda = emit, cancel, cuda
        self.cancelled_at: int | None = None
        self._tokens = 0
        self._step_seconds = 0.0
        self._t0: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._tokens = state.num_input_tokens_seen

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._t0 is not None:
            self._step_seconds += time.perf_counter() - self._t0
            self._t0 = None
        self._check_cancel(state, control)
        return control

    def _check_cancel(self, state, control) -> None:
        if self.cancel.cancelled and self.cancelled_at is None:
            self.cancelled_at = state.global_step
            control.should_training_stop = True
            control.should_save = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or not state.is_world_process_zero:
            return
        import torch

        # tokens per second of training steps only (evaluation and checkpoint time left out)
        tokens = state.num_input_tokens_seen - self._tokens
        rate = tokens / self._step_seconds if self._step_seconds > 0 else 0.0
        self._tokens, self._step_seconds = state.num_input_tokens_seen, 0.0
        memory = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None
        self.emit(TrainStep(state.global_step, state.max_steps, float(logs["loss"]),
                            float(logs.get("learning_rate", 0.0)), rate, memory))  # fmt: skip
        self._check_cancel(state, control)  # a cancel from this event's handler stops at this step

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or "eval_loss" not in metrics or not state.is_world_process_zero:
            return
        loss = float(metrics["eval_loss"])
        self.emit(EvalResult(state.global_step, loss, perplexity(loss)))
        if state.global_step > 0:
            self._check_cancel(state, control)


def _is_main_process() -> bool:
    """False in the other processes of a multi-process (`accelerate launch`) run."""
    return int(os.environ.get("RANK", "0")) == 0


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str))
