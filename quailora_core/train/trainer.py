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
(`quant.record.QuantRecord.bnb`), applies `peft.prepare_model_for_kbit_training` (gradient
checkpointing on CUDA), loads the adapter with `PeftModel.from_pretrained(...,
is_trainable=True)` and trains with the transformers `Trainer`: bf16 and paged 8-bit AdamW
on CUDA, float32 and AdamW on CPU; validation loss and perplexity every `eval_interval`
steps; checkpoints every `save_interval` steps (the last two kept); `resume` continues from
the newest complete checkpoint. A `TrainerCallback` turns the Trainer's logs into
`TrainStep` / `EvalResult` events and stops at the next step end when the `CancelToken`
is cancelled (saving a checkpoint there, so that `--resume` continues from it).

Under `accelerate launch --num_processes N` (data parallel) every rank runs this; only rank 0
emits events and writes the run's files, the ranks decide a stop together (a stop that
reaches one rank stops all at the same step) and compare their trained weights before the
adapter is saved (`train.processes`).

The output folder holds the Trainer's `checkpoint-N/` folders, `adapter/` (the trained peft
adapter with `quailora.json` plus a "training" section, renamed into place only when
complete), `logs/` (the experiment tracker's files: TensorBoard event files by default, through
the Trainer's own `report_to` integrations; `train.tracking`), `training_run.json` (what was
started, and where the tracker writes) and `metrics.json` (written last: its presence means the
run finished).

Relative paths in a run file are relative to the run file's folder (`RunConfig.load`), so
a run folder written by `quailora export-run` works from any working directory.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from quailora_core.adapter.card import model_card
from quailora_core.adapter.record import AdapterRecord
from quailora_core.config import SHARDED_RUN_KINDS, RunConfig
from quailora_core.errors import Cancelled, InputError, QuailoraError
from quailora_core.evaluate import perplexity
from quailora_core.events import (
    CancelToken,
    EvalResult,
    EventCallback,
    Finished,
    Log,
    RankProgress,
    RankStatus,
    Stage,
    TrainStep,
    ignore_events,
)
from quailora_core.files import atomic_dir, atomic_write_text
from quailora_core.model.base import load_quantized_base
from quailora_core.model.fingerprint import check_base
from quailora_core.sources.training_data import load_training_data
from quailora_core.train.examples import IGNORE_INDEX, _count, _split, encode
from quailora_core.train.layout import FINAL_ADAPTER, LOGS_DIR, METRICS_FILE, RUN_RECORD, adapter_dir
from quailora_core.train.processes import any_process, gathered, is_main_process, weights_digest, world_size
from quailora_core.train.run_kinds import check_sharding_device, optimizer_name, prepare_for_training
from quailora_core.train.settings import check_output, check_quantization
from quailora_core.train.tracking import (
    TrackingInfo,
    check_installed,
    report_to,
    tracker_environment,
    tracking_info,
)


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
    tracking: TrackingInfo | None = None  # where the tracker's logs are, how to view them


@dataclass
class _Plan:
    """Everything the cheap checks found; what the heavy part needs."""

    config: RunConfig
    adapter: Path
    record: AdapterRecord
    model_path: str
    output: Path
    resume_from: Path | None
    tokenizer: Any
    train_rows: list
    eval_rows: list
    data_summary: dict[str, Any]


def preflight_train(config: RunConfig, on_event: EventCallback = ignore_events, launching: bool = False) -> _Plan:
    """All checks that need no model weights in memory; raises InputError, writes nothing.
    `launching`: the check launch.sh runs before `accelerate launch` (one plain process that
    stands for the processes about to start)."""
    from quailora_core.model.info import resolve_model_path

    t = config.train
    t.validate()
    check_installed(t.tracking)
    adapter = adapter_dir(config)
    record = AdapterRecord.load(adapter)
    check_quantization(config, record, adapter)
    model_path = resolve_model_path(config.model.path)
    for warning in check_base(model_path, record, adapter, config.model.trust_remote_code):
        on_event(Log("warning", warning))
    check_sharding_device(t.launch, launching or world_size() > 1)
    if t.launch in SHARDED_RUN_KINDS and world_size() == 1 and not launching:  # `python -m quailora_core.train`
        on_event(Log("warning", f"run kind {t.launch!r} trains sharded only under `accelerate launch` (the run "
                                f"folder's launch.sh); this is one process holding the whole 4-bit model"))
    output, resume_from = check_output(config, adapter, record.base_model.fingerprint or None)
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
    return _Plan(config, Path(adapter).expanduser().resolve(), record, model_path, output, resume_from, tokenizer,
                 train_rows, eval_rows, summary)  # fmt: skip


# ---------------------------------------------------------------------------- the run
def run_train(
    config: RunConfig, on_event: EventCallback = ignore_events, cancel: CancelToken | None = None
) -> TrainResult:
    """Fine-tune the adapter of `config` (see the module docstring). Paths in `config` are
    taken as they are (relative to the working directory); `RunConfig.load` resolves a run
    file's paths against its folder."""
    cancel = cancel or CancelToken()
    if not is_main_process():
        on_event = ignore_events  # the other ranks of `accelerate launch` run the same, silently
    on_event(Stage("load"))
    plan = preflight_train(config, on_event)
    return _Training(plan, on_event, cancel).run()


class _Training:
    def __init__(self, plan: _Plan, on_event: EventCallback, cancel: CancelToken) -> None:
        self.plan, self.emit, self.cancel = plan, on_event, cancel

    def run(self) -> TrainResult:
        import datasets
        import torch
        import transformers
        from peft import PeftModel, get_peft_model_state_dict
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments
        from transformers.trainer_callback import PrinterCallback

        plan, t = self.plan, self.plan.config.train
        started = time.perf_counter()
        cuda = torch.cuda.is_available()
        bf16 = cuda and torch.cuda.is_bf16_supported()
        optim = optimizer_name(t.launch, cuda)  # run kinds (train/run_kinds.py)
        if self.cancel.cancelled:
            raise Cancelled()
        transformers.set_seed(t.seed)
        device = None
        if cuda:
            from accelerate import PartialState

            device = PartialState().local_process_index
        model = load_quantized_base(plan.model_path, plan.record, device, plan.config.model.trust_remote_code)
        model.config.use_cache = False
        model = prepare_for_training(model, t.launch, gradient_checkpointing=cuda)  # run kinds (train/run_kinds.py)
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
        logs = plan.output / LOGS_DIR
        self.tracking = tracking_info(t.tracking, logs)
        if not plan.resume_from and is_main_process():
            _write_json(plan.output / RUN_RECORD, {
                "adapter": str(plan.adapter),
                "base_model": plan.model_path,
                "base_fingerprint": plan.record.base_model.fingerprint or None,
                "started": _now(),
                "tracking": self.tracking.to_dict(),
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
            report_to=report_to(t.tracking),
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
            **_logging_dir(TrainingArguments, t.tracking, logs),
        )
        bridge = EventBridge(self.emit, self.cancel, cuda)
        with tracker_environment(t.tracking, logs):  # the tracker's callback reads it when built and trains
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
        digests = self._digests(trainer, get_peft_model_state_dict)
        if len(set(digests)) > 1:  # data parallelism keeps them equal: anything else is a bug to report
            raise QuailoraError(f"The {len(digests)} training processes ended with different adapters.",
                                "Please report this with the run's training_run.json.")  # fmt: skip
        eval_metrics: dict[str, Any] = {}
        if has_eval:
            last = [h for h in state.log_history if "eval_loss" in h]
            if last and last[-1].get("step") == state.global_step:
                eval_metrics = {k: v for k, v in last[-1].items() if k.startswith("eval_")}
            else:
                eval_metrics = trainer.evaluate()
        self.emit(Stage("export"))
        metrics = self._metrics(state, output.metrics, eval_metrics, started, cuda, bf16, optim)
        metrics["processes"] = trainer.accelerator.num_processes
        metrics["adapter_digests"] = digests  # one per process, all equal (none when sharded)
        # A sharded run (FSDP, DeepSpeed ZeRO-3) holds a part of the weights on each rank: the full
        # state dict is gathered by every rank together (accelerate's get_state_dict; ZeRO-3 needs
        # stage3_gather_16bit_weights_on_model_save, which its ds_config.json sets), then rank 0
        # writes the adapter from it. Unsharded runs save their own (equal) weights as before.
        full = None
        if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
            if trainer.is_fsdp_enabled:
                trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
            full = trainer.accelerator.get_state_dict(trainer.model)
        if trainer.is_world_process_zero():
            self._write(trainer.accelerator.unwrap_model(trainer.model), metrics, full)
        trainer.accelerator.wait_for_everyone()
        result = TrainResult(str(plan.output), str(plan.output / FINAL_ADAPTER), state.global_step, metrics,
                             self.tracking)  # fmt: skip
        self.emit(Finished(result.output_dir, {k: v for k, v in metrics.items() if k != "log_history"}))
        return result

    @staticmethod
    def _digests(trainer, state_dict) -> list[str]:
        """Each process's digest of its trained LoRA weights (equal under data parallelism);
        none where the weights are sharded across the processes (FSDP, DeepSpeed ZeRO), whose
        ranks each hold a part."""
        if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
            return []
        return gathered(weights_digest(state_dict(trainer.model)))

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
            "tracking": self.tracking.to_dict(),
            "finished": _now(),
            "log_history": history,
        }

    def _write(self, model, metrics: dict[str, Any], state_dict: dict[str, Any] | None = None) -> None:
        """The trained adapter (atomically, replacing an earlier one) then metrics.json;
        `state_dict`: the full weights a sharded run gathered (peft keeps the adapter's)."""
        plan = self.plan
        record = copy.deepcopy(plan.record)
        record.training = {
            "initialized_adapter": str(plan.adapter),
            "base_model": plan.model_path,
            "settings": asdict(plan.config.train),
            **{k: v for k, v in metrics.items() if k != "log_history"},
        }
        with atomic_dir(plan.output / FINAL_ADAPTER, overwrite=True) as tmp:
            if state_dict is None:
                model.save_pretrained(str(tmp))
            else:
                write_gathered_adapter(model, tmp, state_dict, plan.adapter)
            check_trained_adapter(tmp, plan.adapter)
            record.save(tmp)
            peft_config = json.loads((tmp / "adapter_config.json").read_text(encoding="utf-8"))
            (tmp / "README.md").write_text(model_card(record, peft_config), encoding="utf-8")
        _write_json(plan.output / METRICS_FILE, metrics)


# the wrappers FSDP and activation checkpointing put into parameter names
_WRAPPER_NAMES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _plain_name(key: str) -> str:
    """A parameter name without wrapper parts, to match a gathered state dict's keys to the
    adapter file's names (FSDP's full state dict has plain keys today; a wrapper that keeps its
    part in them would otherwise leave tensors behind, which check_trained_adapter refuses)."""
    for part in _WRAPPER_NAMES:
        key = key.replace(part, "")
    return key


def write_gathered_adapter(model, folder: Path, state_dict: dict[str, Any], initial: Path) -> None:
    """The adapter of a sharded run, from the full state dict its ranks gathered: peft writes the
    config, and the weights are the state dict's tensors named as in the initial adapter's file
    (each key without wrapper parts and without the adapter's name). peft cannot select them
    itself: it picks a state dict's entries by the names of its LoRA modules, and inside nested
    FSDP units those hold `_fsdp_wrapped_module.` mid-name, so it finds none and writes an
    adapter without a tensor (tests/test_fsdp_cpu.py shows both on two CPU ranks)."""
    from peft.utils import SAFETENSORS_WEIGHTS_NAME
    from safetensors import safe_open
    from safetensors.torch import save_file

    adapter_name = getattr(model, "active_adapter", "default")
    with safe_open(str(Path(initial) / SAFETENSORS_WEIGHTS_NAME), framework="pt") as f:
        names = set(f.keys())
    picked = {}
    for key, value in state_dict.items():
        name = ".".join(part for part in _plain_name(key).split(".") if part != adapter_name)
        if name in names:
            picked[name] = value.detach().cpu().contiguous()
    model.save_pretrained(str(folder), state_dict=state_dict)  # the config; its weights are replaced
    save_file(picked, str(Path(folder) / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})


def check_trained_adapter(trained: Path, initial: Path) -> None:
    """The saved adapter holds exactly the tensors of the adapter training started from (the
    same names and shapes), every value finite. Checked on the written file, independently of
    the path that gathered it (a sharded run's state dict, peft's selection of LoRA keys):
    an adapter that lost tensors, kept shards, or diverged is refused, not saved."""
    import torch
    from peft.utils import SAFETENSORS_WEIGHTS_NAME
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(Path(initial) / SAFETENSORS_WEIGHTS_NAME), framework="pt") as f:
        expected = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    weights = load_file(str(Path(trained) / SAFETENSORS_WEIGHTS_NAME))
    got = {k: tuple(v.shape) for k, v in weights.items()}
    if got != expected:
        missing = sorted(set(expected) - set(got))
        changed = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        extra = sorted(set(got) - set(expected))
        detail = "; ".join(f"{what} {len(keys)} (e.g. {keys[0]})" for what, keys in
                           (("missing", missing), ("other shape", changed), ("unexpected", extra)) if keys)  # fmt: skip
        raise QuailoraError(f"The trained adapter does not hold the {len(expected)} LoRA tensors of the adapter "
                            f"it started from: {detail}.", "Please report this with the run's training_run.json; "
                            "the checkpoints in the output folder are kept.")  # fmt: skip
    bad = sorted(k for k, v in weights.items() if not torch.isfinite(v).all())
    if bad:
        raise QuailoraError(f"Training diverged: {len(bad)} of the adapter's tensors hold NaN or infinity "
                            f"(e.g. {bad[0]}).", "Lower the learning rate, or resume from an earlier checkpoint "
                            "in the output folder.")  # fmt: skip


class EventBridge(TrainerCallback):
    """Trainer logs -> TrainStep / EvalResult events; CancelToken -> stop at the step end, with a
    checkpoint there so that --resume continues from it. Only the main process emits.

    With several processes the stop is decided together (`processes.any_process`) at the same
    points on every rank (each step end, each training log, each evaluation after step 0: the
    Trainer calls these callbacks on every rank), so that every rank stops at the same step and
    saves the same checkpoint even when only one of them was asked to stop."""

    def __init__(self, emit: EventCallback, cancel: CancelToken, cuda: bool) -> None:
        self.emit, self.cancel, self.cuda = emit, cancel, cuda
        self.cancelled_at: int | None = None
        self._tokens = self._logged_step = 0
        self._step_seconds = 0.0
        self._t0: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._tokens, self._logged_step = state.num_input_tokens_seen, state.global_step

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._t0 is not None:
            self._step_seconds += time.perf_counter() - self._t0
            self._t0 = None
        self._check_cancel(args, state, control)
        return control

    def _check_cancel(self, args, state, control) -> None:
        """Stop at this step when any rank's token is cancelled; a collective with several
        processes, so called at the same points on every rank (and no more once decided, on all)."""
        if self.cancelled_at is None and any_process(self.cancel.cancelled, args.device):
            self.cancelled_at = state.global_step
            control.should_training_stop = True
            control.should_save = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        seconds, own = self._own_figures(args, state)  # every rank: its own time and memory
        ranks = gathered(own) if world_size() > 1 else [own]  # a collective: the same point on every rank
        if state.is_world_process_zero:
            self._emit_step(state, logs, seconds, own.gpu_memory_gb)
            if len(ranks) > 1:
                self.emit(RankProgress(state.global_step, tuple(ranks)))
        self._check_cancel(args, state, control)  # a cancel from this event's handler stops at this step

    def _own_figures(self, args, state) -> tuple[float, RankStatus]:
        """This process's seconds of training steps since the last log (evaluation and checkpoint
        time left out) and its `RankStatus`; starts the next interval."""
        import psutil
        import torch

        seconds, steps = self._step_seconds, state.global_step - self._logged_step
        self._step_seconds, self._logged_step = 0.0, state.global_step
        device = torch.device(args.device)
        gpu = torch.cuda.max_memory_allocated(device) / 2**30 if self.cuda and device.type == "cuda" else None
        return seconds, RankStatus(
            rank=int(args.process_index), host=socket.gethostname(), step=state.global_step,
            device="cpu" if device.type == "cpu" else str(device),  # the CPU: "cpu:0" in every process
            seconds_per_step=seconds / steps if steps > 0 else 0.0,
            ram_gb=psutil.Process().memory_info().rss / 2**30, gpu_memory_gb=gpu,
        )

    def _emit_step(self, state, logs, seconds: float, memory: float | None) -> None:
        # tokens per second of training steps only, of all processes together (the Trainer's count)
        tokens = state.num_input_tokens_seen - self._tokens
        rate = tokens / seconds if seconds > 0 else 0.0
        self._tokens = state.num_input_tokens_seen
        self.emit(TrainStep(state.global_step, state.max_steps, float(logs["loss"]),
                            float(logs.get("learning_rate", 0.0)), rate, memory))  # fmt: skip

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or "eval_loss" not in metrics:
            return
        if state.is_world_process_zero:
            loss = float(metrics["eval_loss"])
            self.emit(EvalResult(state.global_step, loss, perplexity(loss)))
        if state.global_step > 0:
            self._check_cancel(args, state, control)


def _logging_dir(arguments: type, tracker: str, logs: Path) -> dict[str, str]:
    """`logging_dir=logs` for TensorBoard on transformers releases whose TrainingArguments still
    have it (4.x; 5.x reads TENSORBOARD_LOGGING_DIR, set by `tracking.tracker_environment`)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(arguments)}
    return {"logging_dir": str(logs)} if tracker == "tensorboard" and "logging_dir" in names else {}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str))
