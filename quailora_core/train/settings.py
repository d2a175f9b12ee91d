"""The checks `quailora train` runs before loading anything, beyond the settings themselves
(`TrainSettings.validate`): the adapter's quantization against the run file's, the output
folder and what resuming continues from."""

from __future__ import annotations

import json
from pathlib import Path

from quailora_core.adapter.record import AdapterRecord
from quailora_core.config import DEMO_MODEL, RunConfig, TrainSettings
from quailora_core.errors import InputError
from quailora_core.sources.references import check_data_source, resolve_model_path
from quailora_core.train.layout import RUN_RECORD, adapter_dir, checkpoint_step, checkpoints, output_dir
from quailora_core.train.processes import is_main_process
from quailora_core.train.run_kinds import check_run_kind


def config_from_adapter(adapter: str) -> RunConfig:
    """The run an adapter was initialized with (from its quailora.json), training that adapter."""
    record = AdapterRecord.load(adapter)
    config = RunConfig.from_dict(record.run_config)
    base = record.base_model
    config.model.path = DEMO_MODEL if base.reference == DEMO_MODEL else base.path or config.model.path
    config.train = TrainSettings(adapter=str(Path(adapter).expanduser().resolve()))
    return config


# ---------------------------------------------------------------------------- cheap checks
def check_before_loading(config: RunConfig) -> None:
    """The checks of a training run that read only small files (settings, the adapter's
    record, the model and data references), with nothing of torch or transformers imported,
    so that the command line refuses a typo at once; `trainer.preflight_train` repeats them
    with the rest (tokenizer, data rows, resume)."""
    t = config.train.validate()
    adapter = adapter_dir(config)
    check_quantization(config, AdapterRecord.load(adapter), adapter)
    resolve_model_path(config.model.path)
    if not t.data:
        raise InputError("No training data given.", "Set [train] data in the run file, or use --data PATH.")
    for source in (t.data, t.validation_data):
        if source:
            check_data_source(source)


def check_quantization(config: RunConfig, record: AdapterRecord, adapter: str) -> None:
    """Refuse run-file quantization settings that differ from the adapter's (`auto` follows it),
    and a run kind (`[train] launch`) that the adapter's quantization cannot be trained in (FSDP
    and DeepSpeed need the 4-bit weights stored in the model dtype) or this machine cannot start
    (DeepSpeed not installed)."""
    diffs = record.quantization.differences(config.quantization, config.model.dtype)
    if diffs:
        raise InputError(
            f"The run's quantization differs from what adapter {adapter!r} was computed for: "
            f"{'; '.join(diffs)} (run vs adapter).",
            "The initialization only helps with its own quantizer: fix [quantization] / [model] dtype, "
            "or run `quailora init` again with the new settings.",
        )
    check_run_kind(config.train.launch, record, adapter)


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
    step = checkpoint_step(last)
    if t.epochs == 0 and step >= t.max_steps:
        raise InputError(
            f"The last checkpoint ({last.name}) is already at step {step}, max_steps is {t.max_steps}.",
            f"Raise max steps above {step} to train further.",
        )
    return out, last


def _is_main_process() -> bool:
    """False in the other processes of a multi-process (`accelerate launch`) run."""
    return is_main_process()
