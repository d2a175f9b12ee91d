"""Where QuAILoRA keeps files on a machine, and how it writes them.

`cache_root()` is the one cache folder (datasets' cache lives under it);
`atomic_dir` / `atomic_write_text` are the one way to write an output: into a temporary
sibling, renamed into place only when complete, so an interrupted run leaves nothing
half-written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from quailora_core.errors import InputError


# ---------------------------------------------------------------------------- paths
def cache_root() -> Path:
    """QuAILoRA's cache folder: `$QUAILORA_CACHE`, else `$XDG_CACHE_HOME/quailora` (~/.cache)."""
    env = os.environ.get("QUAILORA_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "quailora"


def check_output_dir(output: str, overwrite: bool) -> None:
    """Refuse an output folder that exists and is not empty, unless overwrite is set."""
    if not output:
        raise InputError("No output folder given.", "Use --output PATH.", field="output")
    path = Path(output)
    if path.exists() and not path.is_dir():
        raise InputError(f"Output {output!r} exists and is a file.", "Choose a folder path with --output.", field="output")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise InputError(
            f"Output folder {output!r} exists and is not empty.",
            "Choose another --output or pass --overwrite.",
            field="output",
        )


@contextlib.contextmanager
def atomic_dir(output: str | Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `output`, on error it vanishes."""
    output = Path(output).expanduser().resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        yield tmp
        check_output_dir(str(output), overwrite)
        if output.exists():
            old = output.with_name(f".{output.name}.old-{os.getpid()}")
            output.rename(old)
            tmp.rename(output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a text file atomically: a temporary sibling, then a rename over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8", newline="")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
