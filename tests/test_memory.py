"""Freed heap memory goes back to the OS once enough of it piles up (glibc)."""
import pytest

from spacy_gliner2 import memory

pytestmark = pytest.mark.skipif(memory._LIBC is None, reason="needs glibc 2.33+")


def _rss_pages() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1])


def _fragment(blocks: int = 1500, size: int = 64 * 1024) -> list:
    """Free every other block of a heap filled with small-enough-for-the-heap blocks."""
    held = [bytearray(size) for _ in range(blocks)]  # zero-filled: every page is touched
    return held[1::2]


def test_trims_only_past_the_threshold():
    kept = _fragment()
    assert memory._LIBC.mallinfo2().fordblks > 40 * 2**20  # the freed half stays in the heap
    before = _rss_pages()
    memory.return_freed_memory(keep=2**40)  # below the threshold: nothing happens
    assert _rss_pages() > before - 1000
    memory.return_freed_memory(keep=0)
    assert _rss_pages() < before - 5000  # at least 20 MB of the ~48 MB freed went back
    del kept
