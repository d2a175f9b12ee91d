"""Fine-tuning the initialized adapter (`quailora train`) and the self-contained run folder
(`quailora export-run`). `python -m quailora_core.train run.toml` is the command a run
folder's launch.sh and the app's Launch start."""

from quailora_core._exports import lazy

_EXPORTS = {
    "trainer": "run_train",
    "export": "export_run",
}
__all__ = sorted(n for names in _EXPORTS.values() for n in names.split())
__getattr__, __dir__ = lazy(__name__, _EXPORTS)
