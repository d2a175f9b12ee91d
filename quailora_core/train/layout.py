"""Where a training run's files live: the exported run folder (`train.export`) and the
training output (checkpoints, the trained adapter, metrics), in one light module.

The app's training controller needs these names and rules to start and follow a run, and
must not import the trainer for them (transformers): both import from here, so they cannot
drift apart.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from quailora_core.config import RunConfig

RUN_FILE = "run.toml"  # the run's configuration, with paths relative to the folder
LAUNCHER = "launch.sh"  # `accelerate launch -m quailora_core.train run.toml`
ADAPTER_DIR = "adapter"  # the initialized adapter training starts from
DATA_DIR = "data"  # copies of the training / validation data
OUTPUT_DIR = "output"  # checkpoints and the trained adapter

# the training output folder
FINAL_ADAPTER = "adapter"
METRICS_FILE = "metrics.json"
RUN_RECORD = "training_run.json"
LOGS_DIR = "logs"  # the experiment tracker's files (TensorBoard event files, W&B's offline run, MLflow's store)
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


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


def checkpoint_step(checkpoint: str | os.PathLike[str]) -> int:
    """The Trainer step a checkpoint was saved at (its trainer_state.json's `global_step`).

    Resume continues from it only while it is below max_steps: the app greys Resume out
    with this rule, the trainer refuses with it (`settings.check_output`)."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    return int(state.get("global_step", 0))
