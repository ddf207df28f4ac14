"""Freed heap memory goes back to the OS once the process has grown enough (glibc)."""
import pytest

from spacy_gliner2 import memory

pytestmark = pytest.mark.skipif(
    memory._MALLOC_TRIM is None or memory.resident_bytes() is None, reason="needs glibc on Linux")

MB = 2**20


def _fragment(blocks: int = 1500, size: int = 64 * 1024) -> list:
    """Free every other block of a heap filled with blocks small enough for the heap."""
    held = [bytearray(size) for _ in range(blocks)]  # zero-filled: every page is touched
    return held[1::2]


def test_trims_once_the_process_grew_past_the_threshold(monkeypatch):
    trims = []
    real_trim = memory._MALLOC_TRIM
    monkeypatch.setattr(memory, "_MALLOC_TRIM", lambda pad: trims.append(pad) or real_trim(pad))
    memory.return_freed_memory(keep=0)  # sets the mark
    kept = _fragment()  # grows by ~96 MB, ~48 MB of it freed again
    grown = memory.resident_bytes()
    memory.return_freed_memory(keep=1024 * MB)  # growth below the threshold: nothing happens
    assert len(trims) == 1 and memory.resident_bytes() > grown - 4 * MB
    memory.return_freed_memory(keep=16 * MB)
    assert len(trims) == 2 and memory.resident_bytes() < grown - 20 * MB  # the freed half went back
    memory.return_freed_memory(keep=16 * MB)  # no growth since that trim: nothing to do
    assert len(trims) == 2
    del kept
