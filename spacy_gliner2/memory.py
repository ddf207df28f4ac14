"""Handing freed heap memory back to the operating system."""
import ctypes
from typing import Optional

# freed heap memory kept for the next batch: reusing it costs no page faults
KEEP_FREED_BYTES = 256 * 2**20


class _MallocInfo(ctypes.Structure):
    """glibc's ``struct mallinfo2``."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _glibc() -> Optional[ctypes.CDLL]:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallocInfo
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # not glibc, or older than 2.33
        return None


_LIBC = _glibc()


def return_freed_memory(keep: int = KEEP_FREED_BYTES) -> None:
    """Hand freed heap pages back to the OS once more than ``keep`` bytes of them pile up
    (glibc's ``malloc_trim``; elsewhere nothing).

    Batches of ever different shapes fragment the heap: without this, the batches of one
    long call (a long document's windows) grow the process one after another although
    nothing is kept. Trimming after every batch costs time instead: the next batch faults
    the pages back in.
    """
    if _LIBC is not None and _LIBC.mallinfo2().fordblks > keep:
        _LIBC.malloc_trim(0)
