"""Fine-tuning the initialized adapter (`quailora train`) and the self-contained run folder
(`quailora export-run`). `python -m quailora_core.train run.toml` is the command a run
folder's launch.sh and the app's Launch start."""

from quailora_core._exports import lazy

_TABLE = {
    "run_train": "trainer",
    "export_run": "export",
}
__all__ = sorted(_TABLE)
__getattr__, __dir__ = lazy(__name__, _TABLE)
