"""Paths the user hands the window: what a dropped path is, a free output folder, recents.

The rules are the core's: a calibration file is one of the formats its loaders read
(`quailora_core.sources.references.FORMATS`), and an output folder is free when
`quailora_core.files.check_output_dir` accepts it without --overwrite.
"""

from __future__ import annotations

from pathlib import Path

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


def is_free_output(path: str) -> bool:
    """Whether a run may write to `path` without --overwrite (missing, or an empty folder)."""
    from quailora_core.errors import InputError
    from quailora_core.files import check_output_dir

    try:
        check_output_dir(path, overwrite=False)
    except InputError:
        return False
    return True


def next_free_output(path: str) -> str:
    """`path` if it is free (missing or an empty folder), else path-2, path-3, ..."""
    if not path or is_free_output(path):
        return path
    base = path.rstrip("/\\")
    stem = base
    # adapter-3 -> adapter-4, not adapter-3-2
    head, sep, tail = base.rpartition("-")
    start = 2
    if sep and tail.isdigit() and head:
        stem, start = head, int(tail) + 1
    n = start
    while not is_free_output(f"{stem}-{n}"):
        n += 1
    return f"{stem}-{n}"


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
