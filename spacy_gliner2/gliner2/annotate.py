"""GLiNER2 result dicts -> Doc annotations: ``doc.ents``, ``doc.spans``, ``doc.cats``, ``doc._.gliner2``.

Spans are mapped onto tokens with ``Doc.char_span``; a span that cannot be aligned stays
in ``doc._.gliner2`` and is counted.
"""
from typing import Dict, List, Tuple

from spacy.tokens import Doc, Span

from ..core.annotate import merge_result, write_cats, write_spans
from ..schema import Schema
from .decoding import Probs, Result

EXTENSION = "gliner2"


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
    """Write one result onto its Doc (beside the results of other labels and tasks that are
    there already); returns how many of its spans could not be aligned."""
    merge_result(doc, EXTENSION, result)
    scored: List[Tuple[Span, float]] = []
    unaligned: Dict[str, int] = {}
    for label, found in result["entities"].items():
        for item in found:
            span = doc.char_span(item["start"], item["end"], label=label, alignment_mode=alignment_mode)
            if span is None or not len(span):
                unaligned[label] = unaligned.get(label, 0) + 1
            else:
                scored.append((span, item["confidence"]))
    write_spans(doc, scored, unaligned, result["entities"].keys(), spans_key=spans_key, ents_policy=ents_policy)
    write_cats(doc, probs, schema)
    return sum(unaligned.values())
