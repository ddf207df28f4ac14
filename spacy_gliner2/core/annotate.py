"""Result dicts -> Doc annotations: ``doc.ents``, ``doc.spans``, ``doc.cats``, ``doc._.gliner2``.

Knows nothing of torch. Spans are mapped onto tokens with ``Doc.char_span``; a span
that cannot be aligned stays in ``doc._.gliner2`` and is counted.
"""
from typing import Dict, List, Tuple

from spacy.tokens import Doc, Span, SpanGroup

from .decoding import Probs, Result
from .schema import Schema

EXTENSION = "gliner2"
ENTS_POLICIES = ("keep_existing", "prefer_new", "unchanged")
ALIGNMENT_MODES = ("strict", "contract", "expand")


def register_extension() -> None:
    """Register ``Doc._.gliner2`` once (plain data: survives DocBin and n_process)."""
    if not Doc.has_extension(EXTENSION):
        Doc.set_extension(EXTENSION, default=None)


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


def annotate(
    doc: Doc,
    result: Result,
    probs: Probs,
    schema: Schema,
    *,
    spans_key: str,
    ents_policy: str,
    alignment_mode: str,
) -> int:
    """Write one result onto its Doc; returns how many spans could not be aligned."""
    doc._.set(EXTENSION, result)
    scored: List[Tuple[Span, float]] = []
    unaligned = 0
    for label, found in result["entities"].items():
        for item in found:
            span = doc.char_span(item["start"], item["end"], label=label, alignment_mode=alignment_mode)
            if span is None or not len(span):
                unaligned += 1
            else:
                scored.append((span, item["confidence"]))
    group = SpanGroup(doc, name=spans_key, spans=[s for s, _ in scored])
    group.attrs["scores"] = [c for _, c in scored]
    group.attrs["unaligned"] = unaligned
    doc.spans[spans_key] = group
    _set_ents(doc, _non_overlapping(scored), ents_policy)
    cats: Dict[str, float] = {key: probs[task][label] for task, label, key in schema.cats_keys()}
    doc.cats.update(cats)
    return unaligned
