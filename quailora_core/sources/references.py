"""What a model or data reference names: a local file (of which kind), a folder, a hub id or
the built-in demo (`demo`), and whether the hub may be used.

Models and datasets share one rule: `owner/name` (or `name`) without path syntax is a hub
id; a data reference that ends in a data file suffix (`notes.jsonl`) is a local file even
when missing, so it is reported missing instead of looked up on the hub. Local sources are
classified and checked cheaply here (kind, files, not binary, not empty) before any loader runs.
Nothing here imports torch or transformers: `RunConfig.validate()` calls these checks, so a
bad path on a command line is refused in a fraction of a second, before the engine loads.
"""

from __future__ import annotations

import codecs
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from quailora_core.demo.shipped import DEMO_MODEL, ensure_demo_model
from quailora_core.errors import InputError

# The reference that names the built-in calibration / fine-tuning text; the demo model's,
# DEMO_MODEL, is the shipped model's own (demo/shipped.py). Here, not in config.py, because
# config imports this module and the checks below need the names.
DEMO_CALIBRATION = "demo"
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
_TRUE = ("1", "true", "yes", "on")
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
# Suffixes that mark a data reference as a (missing) local file rather than a hub dataset id.
DATA_FILE_SUFFIXES = frozenset({
    ".txt", ".md", ".jsonl", ".json", ".csv", ".tsv", ".parquet", ".gz", ".zip", ".xz", ".bz2", ".zst",
    ".arrow", ".text", ".html", ".xml", ".pdf", ".docx", ".doc", ".rtf", ".tar", ".yaml", ".yml", ".toml",
})  # fmt: skip


def offline(variables: tuple[str, ...] = _OFFLINE_VARS) -> bool:
    """True when the environment forbids reaching the hub (read at call time)."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in variables)


def _hub_id(ref: str, file_suffixes: frozenset[str]) -> bool:
    if ref.startswith((".", "/", "~")) or "\\" in ref or not HUB_ID.match(ref):
        return False
    return Path(ref).suffix.lower() not in file_suffixes


def looks_like_model_id(ref: str) -> bool:
    """`owner/name` or `name` with no path syntax: a model reference that names the hub."""
    return _hub_id(ref, frozenset())


def looks_like_dataset_id(ref: str) -> bool:
    """A model-style hub id that does not end in a data file suffix (`notes.jsonl` is a file)."""
    return _hub_id(ref, DATA_FILE_SUFFIXES)


def resolve_model_path(ref: str) -> str:
    """`demo` -> the shipped demo model folder (checked); a local folder -> itself (checked);
    a hub id -> itself (checked for offline). Raises InputError with a fix; reads no weights."""
    if not ref or not ref.strip():
        raise InputError("No model given.", "Pass --model PATH_OR_HUB_ID, or --model demo for the built-in demo model.")
    if ref == DEMO_MODEL:
        return str(ensure_demo_model())
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(f"Model path {ref!r} is a file, not a model folder.", "Give the folder that holds config.json.")
        if not os.access(path, os.R_OK | os.X_OK):
            raise InputError(f"Model folder {ref!r} is not readable.", "Check its permissions.")
        if not (path / "config.json").is_file():
            raise InputError(
                f"Folder {ref!r} is not a model: it has no config.json.",
                "Give a folder saved with save_pretrained(), or a hub id.",
            )
        return str(path)
    if not looks_like_model_id(ref):
        raise InputError(f"Model folder {ref!r} does not exist.", "Check the path, or use --model demo.")
    if offline():
        raise InputError(
            f"{ref!r} looks like a Hugging Face Hub id, but the hub cannot be reached (offline mode).",
            "Download the model first, or give a local model folder.",
        )
    return ref


def check_data_source(source: str) -> None:
    """The cheap checks of a calibration or training data reference (the built-in text, a
    local file or folder: exists, supported kind, text, not empty; a hub id: nothing yet).
    Raises InputError; the loaders in `text` run the same checks again when they read it."""
    if source != DEMO_CALIBRATION:
        _classify(source)


def _check_not_binary(path: Path) -> None:
    """Refuse a file whose first 8 KiB contain NUL bytes or are not UTF-8."""
    with path.open("rb") as f:
        head = f.read(8192)
    hint = "Give a plain-text file saved as UTF-8, or a .jsonl/.csv/.parquet file with a text column."
    if b"\x00" in head:
        raise InputError(f"{str(path)!r} is a binary file, not text (it contains NUL bytes).", hint)
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        raise InputError(
            f"{str(path)!r} is not UTF-8 text (it is binary or in another encoding).",
            "Save it as UTF-8, or give a .jsonl/.csv/.parquet file with a text column.",
        ) from None


def _check_nonempty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise InputError(f"{str(path)!r} is empty.", "Give a file that contains calibration text.")


TEXT_SUFFIXES = (".txt", ".md")


FORMATS = {".txt": "text", ".md": "text", ".jsonl": "json", ".json": "json", ".csv": "csv",
           ".tsv": "csv", ".parquet": "parquet"}  # fmt: skip


SUPPORTED = ", ".join(FORMATS)


def _folder_files(folder: Path) -> list[Path]:
    files = [
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in TEXT_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    if not files:
        raise InputError(
            f"Folder {str(folder)!r} contains no .txt or .md files.",
            "Put plain-text files in it, or give a single .jsonl/.csv/.parquet file.",
        )
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


@dataclass
class _Local:
    """A local source after the cheap checks: what it is and which files it covers."""

    kind: str  # text | folder | json | csv | parquet
    path: Path
    files: list[Path]
    delimiter: str = ","


def _classify(source: str) -> _Local | None:
    """Check a local source cheaply; None means "a hub dataset id". Raises InputError."""
    if not source or not source.strip():
        raise InputError("No calibration data given.", "Use --calibration PATH, a hub dataset id, or demo.")
    path = Path(source).expanduser()
    if path.is_dir():
        files = _folder_files(path)
        for f in files:
            _check_not_binary(f)
        return _Local("folder", path, files)
    if path.is_file():
        suffix = path.suffix.lower()
        kind = FORMATS.get(suffix)
        if kind is None:
            raise InputError(
                f"{source!r} has an unsupported file type ({suffix or 'no extension'}).",
                f"Use one of {SUPPORTED}, a folder of .txt/.md files, or a hub dataset id.",
            )
        _check_nonempty(path)
        if kind != "parquet":
            _check_not_binary(path)
        return _Local(kind, path, [path], "\t" if suffix == ".tsv" else ",")
    if looks_like_dataset_id(source):
        return None
    raise InputError(
        f"Data file or folder {source!r} does not exist.",
        "Check the path; a hub dataset is written owner/name.",
    )


def _env_offline() -> bool:
    return offline(("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _offline_error(source: str) -> InputError:
    return InputError(
        f"Cannot reach the Hugging Face Hub (offline) to fetch dataset {source!r}.",
        "Use a local file (.txt, .jsonl, .csv, .parquet) or folder, or demo.",
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the Hub, so that no network fails fast instead of after retries."""
    if any(
        os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")
    ):
        return True  # the proxy decides; let datasets try
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants

        endpoint = urlparse(constants.ENDPOINT)
    except Exception:
        endpoint = urlparse("https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True
