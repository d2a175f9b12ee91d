"""Telling a Hugging Face Hub id from a local path, and whether the hub may be used.

Models and datasets share these rules: `owner/name` (or `name`) without path syntax or a
file suffix is a hub id; anything else is a local path, and a missing local path is
reported as missing, not looked up on the hub.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

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


def looks_like_hub_id(ref: str, file_suffixes: set[str] | frozenset[str] = frozenset()) -> bool:
    """`owner/name` or `name` with no path syntax and none of `file_suffixes`."""
    if ref.startswith((".", "/", "~")) or "\\" in ref or not HUB_ID.match(ref):
        return False
    return Path(ref).suffix.lower() not in file_suffixes
