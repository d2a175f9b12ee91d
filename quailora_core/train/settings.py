"""The checks `quailora train` runs before loading anything: the settings, the adapter's
quantization against the run file's, the output folder and what resuming continues from."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from quailora_core.adapter.record import AdapterRecord
from quailora_core.config import DEMO_MODEL, RunConfig, TrainSettings, field_help
from quailora_core.errors import InputError
from quailora_core.sources.training_data import TRAIN_FORMATS
from quailora_core.train.layout import RUN_RECORD, checkpoints, output_dir


def config_from_adapter(adapter: str) -> RunConfig:
    """The run an adapter was initialized with (from its quailora.json), training that adapter."""
    record = AdapterRecord.load(adapter)
    config = RunConfig.from_dict(record.run_config)
    base = record.base_model
    config.model.path = DEMO_MODEL if base.reference == DEMO_MODEL else base.path or config.model.path
    config.train = TrainSettings(adapter=str(Path(adapter).expanduser().resolve()))
    return config


# ---------------------------------------------------------------------------- cheap checks
def check_settings(t: TrainSettings) -> None:
    """Raise InputError on the first training setting that cannot work (its `field` is the
    setting, its hint the usual value from the config's own help)."""

    def refuse(name: str, message: str, hint: str | None = None) -> None:
        path = f"train.{name}"
        raise InputError(message, hint or f"The usual value is {field_help(path).usual}.", field=path)

    if t.data_format not in TRAIN_FORMATS:
        refuse("data_format", f"Unknown data format {t.data_format!r}.", f"Use one of {', '.join(TRAIN_FORMATS)}.")
    for name in ("batch_size", "gradient_accumulation", "eval_interval", "save_interval", "log_interval"):
        value = getattr(t, name)
        if not isinstance(value, int) or value < 1:
            refuse(name, f"{name} must be a whole number of at least 1, got {value!r}.")
    if not isinstance(t.seq_len, int) or t.seq_len < 8:
        refuse("seq_len", f"seq_len must be at least 8, got {t.seq_len!r}.")
    if not t.epochs >= 0:
        refuse("epochs", f"epochs must be >= 0, got {t.epochs}.", "Use 0 to train for max_steps steps.")
    if t.epochs == 0 and (not isinstance(t.max_steps, int) or t.max_steps < 1):
        refuse("max_steps", f"max_steps must be at least 1, got {t.max_steps!r}.", "Use --max-steps 100, or --epochs 1.")
    if not (isinstance(t.learning_rate, (int, float)) and math.isfinite(t.learning_rate) and t.learning_rate > 0):
        refuse("learning_rate", f"learning_rate must be a positive number, got {t.learning_rate!r}.",
               "QLoRA uses 1e-4 to 2e-4.")  # fmt: skip
    if not 0 <= t.validation_fraction < 1:
        refuse("validation_fraction", f"validation_fraction must be in [0, 1), got {t.validation_fraction}.")
    if not isinstance(t.warmup_steps, int) or t.warmup_steps < 0:
        refuse("warmup_steps", f"warmup_steps must be >= 0, got {t.warmup_steps!r}.", "Use 0 or a few percent of the steps.")


def check_quantization(config: RunConfig, record: AdapterRecord, adapter: str) -> None:
    """Refuse run-file quantization settings that differ from the adapter's (`auto` follows it)."""
    diffs = record.quantization.differences(config.quantization, config.model.dtype)
    if diffs:
        raise InputError(
            f"The run's quantization differs from what adapter {adapter!r} was computed for: "
            f"{'; '.join(diffs)} (run vs adapter).",
            "The initialization only helps with its own quantizer: fix [quantization] / [model] dtype, "
            "or run `quailora init` again with the new settings.",
        )


def check_output(config: RunConfig, adapter: str, fingerprint: str | None) -> tuple[Path, Path | None]:
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


def _is_main_process() -> bool:
    """False in the other processes of a multi-process (`accelerate launch`) run."""
    return int(os.environ.get("RANK", "0")) == 0
