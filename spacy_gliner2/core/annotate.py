"""Doc writing shared by the families: the result extension, ``doc.cats``, ``doc.spans`` and
the ``doc.ents`` policy. Knows nothing of torch."""
from typing import Any, Dict, List, Tuple

from spacy.tokens import Doc, Span, SpanGroup

from ..schema import Schema
from .intervals import disjoint_from, greedy_disjoint

ENTS_POLICIES = ("keep_existing", "prefer_new", "unchanged")
ALIGNMENT_MODES = ("strict", "contract", "expand")


def register_extension(name: str) -> None:
    """Register ``Doc._.<name>`` once (plain data: survives DocBin and n_process)."""
    if not Doc.has_extension(name):
        Doc.set_extension(name, default=None)


def _bounds(spans: List[Span]) -> List[Tuple[int, int]]:
    return [(s.start, s.end) for s in spans]


def _non_overlapping(scored: List[Tuple[Span, float]]) -> List[Span]:
    """Most confident first (then longest); a span overlapping a kept one is skipped."""
    ranked = [s for s, _ in sorted(scored, key=lambda x: (-x[1], -len(x[0]), x[0].start))]
    kept = [ranked[i] for i in greedy_disjoint(_bounds(ranked))]
    return sorted(kept, key=lambda s: s.start)


def _set_ents(doc: Doc, new: List[Span], policy: str) -> None:
    existing = list(doc.ents)
    if policy == "keep_existing":
        new = [new[i] for i in disjoint_from(_bounds(new), _bounds(existing), len(doc))]
        doc.set_ents(new, default="unmodified")
    elif policy == "prefer_new":
        kept = [existing[i] for i in disjoint_from(_bounds(existing), _bounds(new), len(doc))]
        doc.set_ents(sorted(kept + new, key=lambda s: s.start))


def write_spans(doc: Doc, scored: List[Tuple[Span, float]], unaligned: int, *, spans_key: str, ents_policy: str) -> None:
    """All scored spans to ``doc.spans[spans_key]`` (scores and the unaligned count in its
    attrs); the most confident non-overlapping ones to ``doc.ents`` by ``ents_policy``."""
    group = SpanGroup(doc, name=spans_key, spans=[s for s, _ in scored])
    group.attrs["scores"] = [c for _, c in scored]
    group.attrs["unaligned"] = unaligned
    doc.spans[spans_key] = group
    _set_ents(doc, _non_overlapping(scored), ents_policy)


def write_cats(doc: Doc, probs: Dict[str, Dict[str, Any]], schema: Schema) -> None:
    """Every class probability to ``doc.cats`` (keys by :meth:`Schema.cats_keys`)."""
    doc.cats.update({key: probs[task][label] for task, label, key in schema.cats_keys()})
