"""A self-contained fine-tuning run folder: `quailora export-run` and `export_run(config, run_dir)`.

The folder holds everything a training run needs except the base model and the package:

    run.toml     the run, with the adapter and data given relative to the folder
    adapter/     a copy of the initialized adapter (peft files + quailora.json)
    data/        copies of the local training / validation files (hub ids and `demo` stay as they are)
    launch.sh    `python -m quailora_core.train run.toml --check "$@"` (a bad setting: one line, exit 2), then
                 `accelerate launch ... -m quailora_core.train run.toml "$@"`, from any working directory
    README.md    what is here and how to run it

`quailora train` resolves relative paths in a run file against the file's folder, so the
folder can be copied to another machine (with the base model at the path, or hub id,
written in run.toml's [model] section) and launched there. Training writes to `output/`
inside the folder. The folder is written atomically: under a temporary name, renamed
into place when complete.
"""

from __future__ import annotations

import copy
import os
import shutil
import stat
from pathlib import Path

from quailora_core.adapter.record import AdapterRecord
from quailora_core.config import DEMO_MODEL, RunConfig
from quailora_core.errors import InputError
from quailora_core.files import atomic_dir, check_output_dir
from quailora_core.sources.training_data import check_training_source
from quailora_core.train.layout import ADAPTER_DIR, DATA_DIR, LAUNCHER, OUTPUT_DIR, RUN_FILE, adapter_dir

LAUNCH_SH = """#!/usr/bin/env bash
# Fine-tune the QuAILoRA-initialized adapter of this run folder (see README.md).
#
#   ./launch.sh                      train as run.toml says; results go to output/ in this folder
#   ./launch.sh --resume             continue from the last checkpoint in output/
#   ./launch.sh --max-steps 500      any `quailora train` flag overrides run.toml (--json, --lr, ...)
#   NUM_PROCESSES=4 ./launch.sh      data-parallel on 4 GPUs: one process per GPU (the default is 1);
#                                    the batch size in run.toml is per GPU
#
# Works from any working directory: run.toml's paths are relative to this folder.
# The run is checked first in one plain process (no model loaded): a bad setting is one
# `error:` line and exit 2 here, where under accelerate it would be a traceback and exit 1.
# PYTHON=/path/to/python picks the interpreter (default: python, else python3, on the PATH).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-$(command -v python || command -v python3 || echo python)}"
"$PYTHON" -m quailora_core.train "$HERE/run.toml" --check "$@"
# Several processes: accelerate starts them (torchrun) only with --multi_gpu, else it starts one;
# without a GPU they train on the CPU (gloo). A stop (Ctrl-C, SIGTERM) reaches every process, which
# finish the step and save a checkpoint; the launcher kills them after TORCH_ELASTIC_SHUTDOWN_TIMEOUT s.
MULTI=""; if [ "${NUM_PROCESSES:-1}" -gt 1 ]; then MULTI="--multi_gpu"; fi
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-300}"
exec accelerate launch --num_processes "${NUM_PROCESSES:-1}" $MULTI -m quailora_core.train "$HERE/run.toml" "$@"
"""


def _local(source: str) -> Path | None:
    """The local file or folder a data source names, or None (demo, a hub dataset id, empty)."""
    if not source or source == DEMO_MODEL:
        return None
    path = Path(source).expanduser()
    return path if path.exists() else None


def export_run(config: RunConfig, run_dir: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write the run folder for training `config`'s adapter (see the module docstring).

    Paths in `config` are taken relative to the working directory (a run file's paths
    relative to its folder, as `RunConfig.load` reads them). The adapter
    (`[train] adapter`, else the run's `output`) must exist; `[train] data` must be set and,
    when it is a local path, exist. Raises InputError before writing anything; returns the
    folder's absolute path.
    """
    t = config.train
    check_output_dir(str(run_dir), overwrite)
    t.validate()
    adapter = adapter_dir(config)
    record = AdapterRecord.load(adapter)
    if not t.data:
        raise InputError("No training data set.", "Set [train] data in the run file, or use --data PATH.")
    check_training_source(t.data, "train.data")
    if t.validation_data:
        check_training_source(t.validation_data, "train.validation_data")
    run = copy.deepcopy(config)
    # The run trains exactly what the adapter was computed for; say so in the run file.
    run.quantization = record.quantization.config()
    run.model.dtype = record.quantization.load_dtype
    if run.model.path != DEMO_MODEL and Path(run.model.path).expanduser().exists():
        run.model.path = str(Path(run.model.path).expanduser().resolve())
    run.output = ADAPTER_DIR
    run.overwrite = False
    run.train.adapter = ADAPTER_DIR
    run.train.output = OUTPUT_DIR
    run.train.resume = False
    copies: dict[str, Path] = {}
    for name in ("data", "validation_data"):
        src = _local(getattr(t, name))
        if src is not None:
            dest = f"{DATA_DIR}/{_unique(src.name, {p.name for p in copies.values()})}"
            copies[dest] = src
            setattr(run.train, name, dest)
    cal = _local(run.calibration.source)
    if cal is not None:  # not needed for training; keep a usable absolute reference
        run.calibration.source = str(cal.resolve())
    from quailora_core.adapter.writer import copy_adapter  # imports torch and peft: after the checks

    with atomic_dir(run_dir, overwrite) as tmp:
        copy_adapter(adapter, tmp / ADAPTER_DIR)
        for dest, src in copies.items():
            target = tmp / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, target)
            else:
                shutil.copy2(src, target)
        run.save(tmp / RUN_FILE)
        launcher = tmp / LAUNCHER
        launcher.write_text(LAUNCH_SH, encoding="utf-8")
        launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        (tmp / "README.md").write_text(_readme(run, record), encoding="utf-8")
    return Path(run_dir).expanduser().resolve()


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    stem, suffix = os.path.splitext(name)
    i = 2
    while f"{stem}-{i}{suffix}" in taken:
        i += 1
    return f"{stem}-{i}{suffix}"


def _tracking_text(tracker: str) -> str:
    if tracker == "tensorboard":
        return "TensorBoard event files: `tensorboard --logdir output/logs`"
    if tracker == "none":
        return "none: `[train] tracking` is `none`"
    return f"`[train] tracking` is `{tracker}`; `output/training_run.json` says how to view them"


def _readme(run: RunConfig, record: AdapterRecord) -> str:
    t, quant = run.train, record.quantization.label()
    model = run.model.path
    where = (
        "the demo model (`demo`: ships with the package, no download)"
        if model == DEMO_MODEL
        else f"`{model}`"
    )
    steps = f"{t.epochs:g} epochs" if t.epochs > 0 else f"{t.max_steps} steps"
    return f"""# QuAILoRA fine-tuning run

A self-contained QLoRA fine-tuning run, exported by QuAILoRA Studio (`quailora export-run`).

| file | what it is |
|---|---|
| `run.toml` | the run: base model, quantization, training settings; paths relative to this folder |
| `adapter/` | the QuAILoRA-initialized LoRA adapter ({record.init.get("method")}, rank {record.lora.get("rank")}, {quant}) |
| `data/` | the training data (copied here when it was a local file) |
| `launch.sh` | checks the run (one line and exit 2 on a bad setting), then starts the training with `accelerate launch` |

## Run it

On any machine with the package installed (`pip install quailora`, or `pip install -e .` from
the source) and a CUDA build of PyTorch for GPU training:

```bash
./launch.sh                    # trains {steps}; writes output/ here
./launch.sh --resume           # continues from the last checkpoint in output/
NUM_PROCESSES=4 ./launch.sh    # one process per GPU on a 4-GPU machine
python -m quailora_core.train run.toml --max-steps 10   # the same without accelerate, one process
```

The base model is {where}. On another machine, put the model there or edit `[model] path`
in `run.toml` (a local folder or a Hugging Face Hub id); training refuses a base whose weights
differ from the one the adapter was initialized on, and loads it with exactly the
quantization the adapter was computed for ({quant}, recorded in `adapter/quailora.json`).

`output/` receives the checkpoints (`checkpoint-N/`, the last two kept), the trained adapter
(`output/adapter/`, loadable with `PeftModel.from_pretrained`), `metrics.json` and the
experiment tracker's files in `output/logs/` ({_tracking_text(t.tracking)}).
Add `--json` to stream progress as JSON lines.
"""
