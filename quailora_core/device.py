"""Which torch device a run uses: `auto` picks CUDA when present, CPU otherwise."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator

import torch

from quailora_core.errors import InputError

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(spec: str) -> torch.device:
    """Turn `auto|cpu|cuda|cuda:N` into a torch.device, refusing CUDA that is not there."""
    if not _DEVICE_RE.match(spec or ""):
        raise InputError(f"Unknown device {spec!r}.", "Use auto, cpu, cuda or cuda:N.")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InputError(
            f"Device {spec!r} was asked for but no CUDA GPU is available.",
            "Use --device cpu or auto, or install a CUDA build of torch.",
        )
    index = int(spec.split(":")[1]) if ":" in spec else 0
    if index >= torch.cuda.device_count():
        raise InputError(
            f"Device {spec!r} does not exist: {torch.cuda.device_count()} CUDA device(s) found.",
            "Use cuda:0 or auto.",
        )
    return torch.device("cuda", index)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on CUDA (what QLoRA runs use) and float32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def available_devices() -> list[tuple[str, str]]:
    """(spec, label) pairs for a device chooser: auto, cpu and each CUDA device with free memory."""
    out = [("auto", "auto"), ("cpu", "CPU")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            name = torch.cuda.get_device_name(i)
            out.append((f"cuda:{i}", f"cuda:{i} {name} ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free)"))
    return out


_THREADS_LOCK = threading.Lock()
_threads_stack: list[tuple[int, int]] = []  # (thread ident, count it asked for), innermost last
_threads_before: int | None = None  # the count before the outermost section


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a section with `n` intra-op CPU threads (None: leave as is), then restore.

    Small linear algebra on a small machine runs far faster on one thread: measured on
    the 2-core development box, ALS on a 128x128 layer took 0.05 s on 1 thread and
    8.9 s on 2 when another process was busy (threads spin-waiting on a shared core).

    torch's thread count is process-wide, and the app runs the engine in a worker thread
    while other threads use torch too; so the sections of all threads are kept on one
    stack under a lock: the count is the innermost section's, and the count from before
    the first section comes back when the last one ends, whatever order threads end in.
    """
    global _threads_before
    if n is None:
        yield
        return
    entry = (threading.get_ident(), n)
    with _THREADS_LOCK:
        if not _threads_stack:
            _threads_before = torch.get_num_threads()
        _threads_stack.append(entry)
        torch.set_num_threads(n)
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _threads_stack.remove(entry)
            torch.set_num_threads(_threads_stack[-1][1] if _threads_stack else _threads_before)


def cpu_threads_for(device: torch.device, size: int) -> int | None:
    """1 thread for CPU work on matrices of up to 1024 x 2048 elements, else the default."""
    return 1 if device.type == "cpu" and size <= 1024 * 2048 else None
