"""Overlap policies for scored spans of one label (GLiNER2.5's ``flat``, ``nested``, ``longest``).

Spans are tuples ``(score, start, end, ...)``, half-open (more items ride along). Every policy first keeps one span per exact
boundary pair (the best ranked; ranking is score descending, then start, end, input order) and
returns its spans in that ranking:

- ``flat``: the non-overlapping set with the largest total score (weighted interval scheduling;
  equal totals: more spans, then the better ranked set). Not the greedy rule of span checkpoints:
  0.9 on [0, 3) loses to 0.6 on [0, 1) plus 0.6 on [2, 3).
- ``nested``: in ranking order, a span is kept unless it crosses a kept one (containment is fine).
- ``longest``: spans strictly inside another span are dropped.

Cost: ``flat`` and ``longest`` O(n log n); ``nested`` reads only the positions inside each span.
Knows nothing of spaCy or torch.
"""
import bisect
from typing import Dict, List, Sequence, Tuple

Scored = Tuple[float, int, int]


def _ranked_distinct(spans: Sequence[Scored]) -> List[int]:
    """Input indices, best ranked first, one per (start, end)."""
    order = sorted(range(len(spans)), key=lambda i: (-spans[i][0], spans[i][1], spans[i][2], i))
    seen, out = set(), []
    for i in order:
        key = (spans[i][1], spans[i][2])
        if key not in seen:
            seen.add(key)
            out.append(i)
    return out


def resolve(spans: Sequence[Scored], policy: str) -> List[Scored]:
    """The spans ``policy`` keeps, best ranked first."""
    ranked = _ranked_distinct(spans)
    if policy == "flat":
        kept = _flat(spans, ranked)
    elif policy == "nested":
        kept = _nested(spans, ranked)
    elif policy == "longest":
        kept = _longest(spans, ranked)
    else:
        raise ValueError(f"unknown overlap policy {policy!r}; expected flat, nested or longest")
    rank = {i: r for r, i in enumerate(ranked)}
    return [spans[i] for i in sorted(kept, key=rank.__getitem__)]


def _flat(spans: Sequence[Scored], ranked: List[int]) -> List[int]:
    rank = {i: r for r, i in enumerate(ranked)}
    by_end = sorted(ranked, key=lambda i: (spans[i][2], spans[i][1], -spans[i][0], i))
    ends = [spans[i][2] for i in by_end]
    # best[j]: the best total over the first j spans by end, its size, and whether span j-1 is in it
    total, size, took = [0.0], [0], [False]

    def selection(j: int) -> List[int]:
        out = []
        while j > 0:
            if took[j]:
                out.append(by_end[j - 1])
                j = bisect.bisect_right(ends, spans[by_end[j - 1]][1], 0, j - 1)
            else:
                j -= 1
        return out

    for j, i in enumerate(by_end):
        before = bisect.bisect_right(ends, spans[i][1], 0, j)  # spans ending at or before this start
        with_total, with_size = total[before] + float(spans[i][0]), size[before] + 1
        if with_total != total[j]:
            take = with_total > total[j]
        elif with_size != size[j]:
            take = with_size > size[j]
        else:  # equal totals and sizes: the set whose ranking reads better
            total.append(with_total), size.append(with_size), took.append(True)
            with_set = sorted(rank[k] for k in selection(j + 1))
            took[-1] = False
            take = with_set < sorted(rank[k] for k in selection(j + 1))
            total.pop(), size.pop(), took.pop()
        total.append(with_total if take else total[j])
        size.append(with_size if take else size[j])
        took.append(take)
    return selection(len(by_end))


def _nested(spans: Sequence[Scored], ranked: List[int]) -> List[int]:
    # a candidate [s, e) crosses a kept [a, b) iff a kept span ends inside (s, e) having started
    # before s, or starts inside (s, e) and ends after e
    first_start_ending_at: Dict[int, int] = {}
    last_end_starting_at: Dict[int, int] = {}
    kept = []
    for i in ranked:
        s, e = spans[i][1], spans[i][2]
        if any(first_start_ending_at.get(p, s) < s or last_end_starting_at.get(p, e) > e for p in range(s + 1, e)):
            continue
        kept.append(i)
        first_start_ending_at[e] = min(first_start_ending_at.get(e, s), s)
        last_end_starting_at[s] = max(last_end_starting_at.get(s, e), e)
    return kept


def _longest(spans: Sequence[Scored], ranked: List[int]) -> List[int]:
    # by start, longer first: a span is strictly inside another iff an earlier one reaches its end
    kept, reach = [], None
    for i in sorted(ranked, key=lambda i: (spans[i][1], -spans[i][2])):
        if reach is None or spans[i][2] > reach:
            kept.append(i)
            reach = spans[i][2]
    return kept
