"""Non-overlapping interval selection in time linear in the intervals' total width.

Spans (of words, characters or tokens) are half-open ``[start, end)`` with ``end > start``.
A :class:`Coverage` marks the positions that kept spans cover, so asking whether a span
overlaps any kept one reads only that span's own positions: no step compares a span with
every kept one. Knows nothing of spaCy or torch.
"""
from typing import Iterable, List, Tuple

Interval = Tuple[int, int]


class Coverage:
    """Positions ``0 .. length - 1`` covered by the spans taken so far."""

    def __init__(self, length: int):
        self._taken = bytearray(max(length, 0))

    def free(self, start: int, end: int) -> bool:
        """Whether ``[start, end)`` overlaps no taken span."""
        if end <= start:
            raise ValueError(f"an interval must not be empty: [{start}, {end})")
        if end > len(self._taken):
            self._taken.extend(bytes(end - len(self._taken)))
        return self._taken.find(1, start, end) < 0

    def take(self, start: int, end: int) -> None:
        """Mark ``[start, end)`` as covered."""
        if end > len(self._taken):
            self._taken.extend(bytes(end - len(self._taken)))
        self._taken[start:end] = b"\x01" * (end - start)


def greedy_disjoint(intervals: Iterable[Interval], length: int = 0) -> List[int]:
    """Indices of the intervals the greedy rule keeps, given in priority order: each is
    kept unless it overlaps one kept before it. ``length`` (the largest end, if known)
    sizes the coverage up front."""
    coverage = Coverage(length)
    kept = []
    for index, (start, end) in enumerate(intervals):
        if coverage.free(start, end):
            coverage.take(start, end)
            kept.append(index)
    return kept


def disjoint_from(intervals: Iterable[Interval], blockers: Iterable[Interval], length: int = 0) -> List[int]:
    """Indices of the intervals that overlap none of ``blockers``."""
    coverage = Coverage(length)
    for start, end in blockers:
        coverage.take(start, end)
    return [i for i, (start, end) in enumerate(intervals) if coverage.free(start, end)]
