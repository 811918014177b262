"""Keep freed host memory for reuse (glibc malloc settings), so large CPU tensors are not page-faulted afresh
every step.

glibc serves allocations above 32 MB with fresh ``mmap`` pages and returns them on free; every new
[tokens, 65536] logits tensor then costs a page fault per 4 KB page, which on this project's CPUs takes
about 8x longer than the arithmetic on it (measured: a 160 MB multiply 60 ms fresh vs 7 ms into an existing
buffer). With mmap off and a high trim threshold, freed blocks stay in the heap and are reused.
`esvit bench train` shows the effect (``--no-reuse-memory`` to compare).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["keep_freed_memory"]

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_done = False


def keep_freed_memory() -> bool:
    """Apply the settings once per process; returns whether they are active (glibc on Linux only)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to do
        return False
    if not ok:
        logging.getLogger("esvit").warning("mallopt refused the memory-reuse settings; continuing without")
    _done = ok
    return ok
