"""The built-in demo model: a tiny Llama that ships with the project, the same bytes everywhere.

`resources/demo-model/` (at the top of the repository; installed as the data package
`quailora_resources`) holds an ordinary Hugging Face model folder: a 1.8 M-parameter
Llama (hidden 128, 4 blocks, vocabulary 4000) pretrained by `resources/make_demo_model.py`
on docstrings of the standard library and of large Python packages, stored in bfloat16
(3.6 MB), with its byte-level BPE tokenizer and `quailora_demo.json`, which says what it
is and what quantizing it costs. 4-bit NF4 costs it real perplexity, so the
initialization has a gap to recover on the demo.

Why shipped rather than built on the user's machine: a model trained at first use came
out different on every machine (other CPU, other library versions), so no figure in the
README or in a test could be relied on, and the first Run waited minutes for it. Loading
is instant and offline. `DEMO_FILES` is what this package expects, byte for byte: the
loader checks the files against it (SHA-256, about 10 ms) and refuses a damaged or
replaced copy with the command that restores it; a test checks the same.

`builder.build_tiny_llm` is the general builder that made it; `benchmarks/pretrain_tiny.py`
calls it with other sizes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import quailora_resources

from quailora_core.errors import InputError

DEMO_MODEL = "demo"  # the reference (`--model demo`, [model] path = "demo") that names this model
DEMO_DIR_NAME = quailora_resources.DEMO_MODEL
RESOURCES_PACKAGE = "quailora_resources"  # the top-level resources/ folder, as installed
MARKER_FILE = "quailora_demo.json"
MARKER_KIND = "quailora-demo-model"

# SHA-256 of every file of resources/demo-model/, as resources/make_demo_model.py printed
# them. Change them only together with the files (and the README's demo figures).
DEMO_FILES: dict[str, str] = {
    "README.md": "84ec32b5f462befa806b124c025ad55dc854ad4d76d8a2214e8115a9232be6cc",
    "config.json": "e682ef652572f8b7b23138efe474a414e679041c9dc8f0191f486f6857b0c4b6",
    "generation_config.json": "852b78ce05d6c857925f920b3fc8313ec7d70eca21e820595db1a892267bebd6",
    "model.safetensors": "9d0a228cb68fd102ab8421e1f5ef100f9cd160930a87e398ff2191aa35ddde62",
    "quailora_demo.json": "4d42b7d1ab90fff8b50057dc6d26581b2fcba45416e364f005ef2b190184f26d",
    "tokenizer.json": "a8b4b8281206eb1d395642950c7bbfb3ba1d35ea840e7a4059e14e308e00598b",
    "tokenizer_config.json": "f6a89ae01fbc7e0d3dac74fdc7b58d816baa4bedb9f60593638c54563fdd5d18",
}

LogFn = Callable[[str], None]


def _log(on_log: LogFn | None, message: str) -> None:
    if on_log is not None:
        on_log(message)


def resources_dir() -> Path:
    """The project's top-level `resources/` folder, as installed (`quailora_resources`)."""
    return quailora_resources.ROOT


def demo_model_path() -> Path:
    """Where the shipped demo model lives (not checked: see `ensure_demo_model`)."""
    return resources_dir() / DEMO_DIR_NAME


def is_demo_path(path: str | os.PathLike[str]) -> bool:
    """True for `demo` and for a folder holding the demo model's marker file."""
    if str(path) == DEMO_MODEL:
        return True
    marker = Path(path).expanduser() / MARKER_FILE
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("kind") == MARKER_KIND
    except (OSError, ValueError, AttributeError):
        return False


def _restore_hint(folder: Path) -> str:
    return (
        f"Restore it: in a clone, `git checkout -- {folder.name}` in {folder.parent}; otherwise reinstall "
        "the package. (resources/make_demo_model.py makes a new one, with other figures.)"
    )


@functools.lru_cache(maxsize=8)
def _verified(folder: str, stamp: tuple) -> None:
    """Check the folder's files against DEMO_FILES once per (folder, sizes and mtimes)."""
    path = Path(folder)
    missing = [name for name in DEMO_FILES if not (path / name).is_file()]
    if missing:
        raise InputError(f"The demo model in {path} is incomplete: {', '.join(missing)} is missing.", _restore_hint(path))
    for name, expected in DEMO_FILES.items():
        digest = hashlib.sha256((path / name).read_bytes()).hexdigest()
        if digest != expected:
            raise InputError(
                f"The demo model's {name} in {path} is not the file this version ships "
                f"(SHA-256 {digest[:12]}…, expected {expected[:12]}…; a Git LFS pointer or a damaged copy?).",
                _restore_hint(path),
            )


def ensure_demo_model(folder: str | os.PathLike[str] | None = None) -> Path:
    """The demo model folder (default: the shipped one), checked against `DEMO_FILES`;
    InputError, with the command that restores it, when a file is missing or differs."""
    path = Path(folder) if folder is not None else demo_model_path()
    stamp = tuple(
        (name, st.st_size, st.st_mtime_ns)
        for name in sorted(DEMO_FILES)
        for st in [_stat(path / name)]
    )
    _verified(str(path), stamp)
    return path


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except OSError:
        return os.stat_result((0,) * 10)


