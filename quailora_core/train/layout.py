"""The file layout of an exported run folder (`run_export.export_run`), in one light module.

The GUI's training controller needs these names to start and follow a run, and must not
import `run_export` for them (that pulls in transformers through `train`): both import from
here, so the names cannot drift apart.
"""

RUN_FILE = "run.toml"  # the run's configuration, with paths relative to the folder
LAUNCHER = "launch.sh"  # `accelerate launch -m quailora_core.train run.toml`
ADAPTER_DIR = "adapter"  # the initialized adapter training starts from
DATA_DIR = "data"  # copies of the training / validation data
OUTPUT_DIR = "output"  # checkpoints and the trained adapter
