"""Hand memory the process has freed back to the operating system.

The engine allocates and frees one block's weights, activations and statistics per block
(tens to hundreds of MB each). glibc's allocator keeps most of what is freed inside the
process (its mmap threshold grows with the sizes it has seen, and freed chunks in the
middle of the heap are not returned), so the resident size drifts upwards block after
block although nothing is kept: 40 % more than needed on a small model. `malloc_trim(0)`
returns those free pages; it is called between blocks and before the self-check. On
other C libraries (macOS, Windows, musl) it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
LARGE = 1 << 20


@functools.cache
def _libc_function(name: str):
    library = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(library), name) if library else None
    except (OSError, AttributeError):
        return None


@functools.cache
def return_large_allocations() -> bool:
    """Map allocations of LARGE bytes and more on their own (see the module docstring);
    True where the C library took the setting."""
    mallopt = _libc_function("mallopt")
    return bool(mallopt is not None and mallopt(M_MMAP_THRESHOLD, LARGE))


def release_freed_memory() -> None:
    """Collect garbage, then return the freed heap pages to the OS where glibc allows it."""
    gc.collect()
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)
