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
from collections.abc import Collection, Iterator
from pathlib import Path

from quailora_core.errors import InputError


# ---------------------------------------------------------------------------- paths
def cache_root() -> Path:
    """QuAILoRA's cache folder: `$QUAILORA_CACHE`, else `$XDG_CACHE_HOME/quailora` (~/.cache)."""
    env = os.environ.get("QUAILORA_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "quailora"


def output_root() -> Path:
    """Where the app and the job queue put new outputs: `$QUAILORA_GUI_OUTPUT_ROOT`, else
    ~/QuAILoRA. One rule, so an adapter folder the app suggests and the queue file
    (`<root>/queue.json`) a terminal appends to are found in the same place."""
    return Path(os.environ.get("QUAILORA_GUI_OUTPUT_ROOT") or Path.home() / "QuAILoRA").expanduser()


def is_free_output(path: str) -> bool:
    """Whether a run may write to `path` without --overwrite (missing, or an empty folder)."""
    try:
        check_output_dir(path, overwrite=False)
    except InputError:
        return False
    return True


def next_free_output(path: str, taken: Collection[str] = ()) -> str:
    """`path` if it is free (missing or an empty folder) and not in `taken` (folders that
    queued runs will write), else path-2, path-3, ... (adapter-3 -> adapter-4, not adapter-3-2)."""

    def free(p: str) -> bool:
        return is_free_output(p) and p not in taken

    if not path or free(path):
        return path
    stem = path.rstrip("/\\")
    head, sep, tail = stem.rpartition("-")
    start = 2
    if sep and tail.isdigit() and head:
        stem, start = head, int(tail) + 1
    n = start
    while not free(f"{stem}-{n}"):
        n += 1
    return f"{stem}-{n}"


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
        # mkdtemp makes the folder 0700 whatever the umask; the output gets the mode a plain
        # mkdir would give it (0755 under umask 022), so another user (a serving container)
        # can read it. Private while it is partial, opened up only once complete.
        yield tmp
        _apply_umask_modes(tmp)
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


def current_umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask_modes(root: Path) -> None:
    """Give `root` and the folders and files under it the modes the umask gives new ones.

    Folders get 0777 & ~umask; files 0666 & ~umask, plus the execute bits the umask allows
    for a file already executable by its owner (the run folder's launcher). Links are left alone.
    """
    mask = current_umask()
    dir_mode, file_mode = 0o777 & ~mask, 0o666 & ~mask
    for folder, dirs, files in os.walk(root):
        os.chmod(folder, dir_mode)
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            mode = file_mode
            if os.stat(path).st_mode & 0o100:
                mode |= 0o111 & ~mask
            os.chmod(path, mode)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a text file atomically: a temporary sibling, then a rename over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8", newline="")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
