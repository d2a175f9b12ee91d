"""Paths the user hands the window: what a dropped path is, a free output folder, recents.

The rules are the core's: a calibration file is one of the formats its loaders read
(`quailora_core.sources.references.FORMATS`), and an output folder is free when
`quailora_core.files.check_output_dir` accepts it without --overwrite.
"""

from __future__ import annotations

from pathlib import Path

# the core's rules (the job queue's sweeps need them too), as the views import them
from quailora_core.files import is_free_output as is_free_output
from quailora_core.files import next_free_output as next_free_output

MODEL_MARKERS = ("config.json",)


def calibration_suffixes() -> frozenset[str]:
    """File suffixes the core reads calibration text from."""
    from quailora_core.sources.references import FORMATS

    return frozenset(FORMATS)


def classify_path(path: str) -> str | None:
    """What a dropped path is: 'run' (.toml), 'model' (folder with config.json),
    'calibration' (text/tabular file or another folder), or None."""
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() == ".toml":
            return "run"
        if p.name == "config.json":
            return "model"
        if p.suffix.lower() in calibration_suffixes():
            return "calibration"
        return None
    if p.is_dir():
        if any((p / marker).is_file() for marker in MODEL_MARKERS):
            return "model"
        return "calibration"
    return None


def model_path_for(path: str) -> str:
    """A dropped config.json stands for its folder."""
    p = Path(path)
    return str(p.parent) if p.is_file() and p.name == "config.json" else str(p)


class RecentList:
    """Most recent first, no duplicates, at most `limit` entries."""

    def __init__(self, items: list[str] | None = None, limit: int = 10) -> None:
        self.limit = limit
        self.items: list[str] = []
        for item in reversed(list(items or [])[:limit]):
            self.add(item)

    def add(self, item: str) -> None:
        if not item:
            return
        if item in self.items:
            self.items.remove(item)
        self.items.insert(0, item)
        del self.items[self.limit :]

    def clear(self) -> None:
        self.items.clear()


def gguf_file_for(path: str) -> str:
    """The GGUF file the user named, with .gguf added when they left it off."""
    p = Path(path).expanduser()
    return str(p if p.suffix == ".gguf" else p.with_name(p.name + ".gguf"))


def merged_folder_for(gguf_file: str) -> str:
    """Where the merged folder of an Export GGUF goes: beside the file, named after it (FILE.gguf ->
    FILE-merged, or -2, -3 ... when that is taken)."""
    p = Path(gguf_file)
    return next_free_output(str(p.with_name(p.stem + "-merged")))
