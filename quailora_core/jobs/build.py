"""Jobs from run configs, checked before they enter the queue.

A job is refused when its run would be (`RunConfig.validate`, `TrainSettings.validate`):
the same one-line `InputError` as `quailora init` / `train` print, before the queue file is
touched, so a queue never holds a job that can only fail on its first check. What needs the
model (its layers, the adapter a queued init will write) is checked when the job runs.
"""

from __future__ import annotations

from pathlib import Path

from quailora_core.config import RunConfig
from quailora_core.errors import InputError
from quailora_core.jobs.job import KINDS, Job


def init_job(config: RunConfig, label: str = "") -> Job:
    """An initialization of `config` (checked), paths made absolute against the working directory."""
    config = config.resolved(Path.cwd())
    config.validate()
    return Job("init", config.to_dict(), label or _init_label(config), output=config.output)


def train_job(config: RunConfig, label: str = "") -> Job:
    """A training run of `config` (its paths absolute: `RunConfig.load` resolves a run file's)."""
    from quailora_core.train.layout import adapter_dir, output_dir

    config = config.resolved(Path.cwd())
    config.train.validate()
    if not adapter_dir(config):
        raise InputError("The run names no adapter to train.", "Set [train] adapter (or output) in the run file.",
                         field="train.adapter")  # fmt: skip
    if not config.train.data:
        raise InputError("The run names no training data.", "Set [train] data in the run file.", field="train.data")
    out = output_dir(config)
    return Job("train", config.to_dict(), label or f"train {Path(out).name}", output=out)


def check_job(job: Job) -> None:
    """Refuse a job that is not one of the kinds, or whose run config does not check."""
    if job.kind not in KINDS:
        raise InputError(f"Unknown job kind {job.kind!r}.", f"Use one of {', '.join(KINDS)}.")
    config = job_config(job)
    if job.kind == "init":
        config.validate()
    else:
        config.train.validate()


def job_config(job: Job) -> RunConfig:
    return RunConfig.from_dict(job.config)


def _init_label(config: RunConfig) -> str:
    """The output folder's name, with rank, method and bits unless the name already says them
    (a sweep's `adapter-r16-quailora-4bit`)."""
    name, r, m, b = Path(config.output).name, config.lora.rank, config.init.method, config.quantization.bits
    return name if f"r{r}-{m}-{b}bit" in name else f"{name} (r{r} {m} {b}-bit)"
