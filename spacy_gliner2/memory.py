"""Handing freed heap memory back to the operating system."""
import ctypes
from typing import Callable, Optional


def _malloc_trim() -> Optional[Callable[[int], int]]:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _malloc_trim()


def return_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc's ``malloc_trim``; elsewhere nothing).

    Batches of ever different shapes fragment the heap: without this, the batches of one
    long call (a long document's windows) grow the process one after another although
    nothing is kept. One-batch calls skip it: the next batch would fault the pages back
    in, and a stream of such calls levels off by itself.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
