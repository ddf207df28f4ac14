"""Handing freed heap memory back to the operating system."""
import ctypes
import os
from typing import Callable, Optional

# growth of the resident set since the last trim that is left alone: batches reuse those
# pages without faulting them back in. A 20,000-word document (2,048-token batches, exact
# mode): peak +238-248 MB with 128 MB, +297-315 MB with 256 MB, in the same time (52 s);
# 64 texts in 8 batches fault in as many pages with 128 MB as with 256 MB (38 k), with 64 MB 2.4x.
KEEP_GROWTH_BYTES = 128 * 2**20


def _malloc_trim() -> Optional[Callable[[int], int]]:
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    return trim


def resident_bytes() -> Optional[int]:
    """This process's resident set size (Linux; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


_MALLOC_TRIM = _malloc_trim()
_after_last_trim: Optional[int] = None  # resident bytes right after the last trim


def return_freed_memory(keep: int = KEEP_GROWTH_BYTES) -> None:
    """Hand freed heap pages back to the OS (glibc's ``malloc_trim``; elsewhere nothing)
    once the process has grown by more than ``keep`` bytes since the last time.

    Batches of ever different shapes fragment the heap: without this, the batches of one
    long call (a long document's windows) grow the process one after another although
    nothing is kept. Trimming after every batch would cost time instead: the next batch
    faults the pages back in.
    """
    global _after_last_trim
    if _MALLOC_TRIM is None:
        return
    now = resident_bytes()
    if now is not None and _after_last_trim is not None:
        if now - _after_last_trim <= keep:
            _after_last_trim = min(_after_last_trim, now)  # memory freed elsewhere lowers the mark
            return
    _MALLOC_TRIM(0)
    _after_last_trim = resident_bytes()
