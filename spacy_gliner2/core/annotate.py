"""Doc writing shared by the families: the result extension, ``doc.cats``, ``doc.spans`` and
the ``doc.ents`` policy. Knows nothing of torch."""
from typing import Any, Dict, List, Tuple

from spacy.tokens import Doc, Span, SpanGroup

from ..schema import Schema

ENTS_POLICIES = ("keep_existing", "prefer_new", "unchanged")
ALIGNMENT_MODES = ("strict", "contract", "expand")


def register_extension(name: str) -> None:
    """Register ``Doc._.<name>`` once (plain data: survives DocBin and n_process)."""
    if not Doc.has_extension(name):
        Doc.set_extension(name, default=None)


def _overlap(a: Span, b: Span) -> bool:
    return a.start < b.end and b.start < a.end


def _non_overlapping(scored: List[Tuple[Span, float]]) -> List[Span]:
    """Most confident first (then longest); a span overlapping a kept one is skipped."""
    kept: List[Span] = []
    for span, _ in sorted(scored, key=lambda x: (-x[1], -len(x[0]), x[0].start)):
        if not any(_overlap(span, k) for k in kept):
            kept.append(span)
    return sorted(kept, key=lambda s: s.start)


def _set_ents(doc: Doc, new: List[Span], policy: str) -> None:
    existing = list(doc.ents)
    if policy == "keep_existing":
        new = [s for s in new if not any(_overlap(s, e) for e in existing)]
        doc.set_ents(new, default="unmodified")
    elif policy == "prefer_new":
        kept = [e for e in existing if not any(_overlap(e, s) for s in new)]
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
