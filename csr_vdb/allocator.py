"""glibc heap tuning for long training runs: temporaries stay on the heap, free pages go back to the OS.

A training step allocates the same few-MB temporaries every time. With glibc's defaults many of
them come from fresh ``mmap`` calls or from heap memory just trimmed back to the OS, and every
first touch of such a page faults: a large share of a step's time. `tune_heap_for_training` raises
the thresholds once, so the temporaries are reused from the heap; `release_free_heap`, called every
`RELEASE_HEAP_EVERY` steps, keeps the resident set flat on long streams. Both are no-ops where glibc
is not the allocator. bench/train_speed.py measures the effect (rows/s, peak RSS).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

logger = logging.getLogger(__name__)

RELEASE_HEAP_EVERY = 100
"""Training steps between two `release_free_heap` calls."""

MMAP_THRESHOLD = 64 << 20
"""Allocations at least this large get their own mapping (glibc ``M_MMAP_THRESHOLD``)."""

TRIM_THRESHOLD = 512 << 20
"""Free heap above this is returned to the OS at once (glibc ``M_TRIM_THRESHOLD``)."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def _glibc() -> Any:
    """glibc through ctypes (None where the C library has no ``mallopt``/``malloc_trim``)."""
    try:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        lib = ctypes.CDLL(name) if name else None
    except OSError:  # pragma: no cover - non-glibc platforms
        logger.debug("no glibc malloc tuning", exc_info=True)
        return None
    return lib if lib is not None and hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else None


@functools.cache
def tune_heap_for_training() -> bool:
    """Set glibc's mmap and trim thresholds to `MMAP_THRESHOLD` and `TRIM_THRESHOLD`, once per process.

    Process-wide and not undone after training (glibc cannot restore its adaptive thresholds).

    Returns:
        Whether the thresholds were set (False where glibc is not the allocator).
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return True


def release_free_heap() -> bool:
    """Give free heap pages back to the OS (glibc ``malloc_trim(0)``).

    Without it the heap fragments and the resident set creeps up over a long stream.

    Returns:
        Whether glibc was asked to trim (False where it is not the allocator).
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
