"""displaCy views of what the components wrote: entities and scored spans with their confidences,
and the structures, relations and classes of ``doc._.gliner2`` / ``doc._.gliclass`` as HTML tables.

``ent_data`` and ``span_data`` return displaCy's manual format, for ``displacy.render`` and
``displacy.serve`` (``manual=True``) with the colours of :func:`colors`; :func:`render` returns one
HTML fragment (or page) with everything, for notebooks (``IPython.display.HTML``) or a file.
"""
from html import escape
from typing import Any, Dict, Iterable, List, Optional

from spacy import displacy
from spacy.tokens import Doc

# displaCy's own palette is keyed by spaCy's label names; ours cycles through these per label
PALETTE = ("#7aecec", "#bfeeb7", "#feca74", "#ff9561", "#aa9cfc", "#c887fb", "#9cc9cc", "#ffeb80",
           "#ff8197", "#f0d0ff", "#bfe1d9", "#e4e7d2", "#e2b6a8", "#c6d0ff", "#d9fe74")
EXTENSIONS = ("gliner2", "gliclass")


def _shown(label: str, score: Optional[float]) -> str:
    """A label with its score, joined by a no-break space (displaCy's span labels wrap at spaces)."""
    return label if score is None else f"{label}\u00a0{score:.2f}"


def _span_scores(doc: Doc, spans_key: str) -> Dict[Any, float]:
    group = doc.spans.get(spans_key)
    if group is None:
        return {}
    scores = group.attrs.get("scores") or [None] * len(group)
    return {(s.start, s.end, s.label_): c for s, c in zip(group, scores) if c is not None}


def ent_data(doc: Doc, spans_key: str = "gliner2", scores: bool = True) -> Dict[str, Any]:
    """``doc.ents`` in displaCy's manual ``ent`` format; with ``scores``, each label carries the
    confidence of its span in ``doc.spans[spans_key]`` (entities of other components: none)."""
    known = _span_scores(doc, spans_key) if scores else {}
    ents = [{"start": e.start_char, "end": e.end_char, "base_label": e.label_,
             "label": _shown(e.label_, known.get((e.start, e.end, e.label_)))} for e in doc.ents]
    return {"text": doc.text, "ents": ents, "title": None}


def span_data(doc: Doc, spans_key: str = "gliner2", scores: bool = True, min_score: float = 0.0) -> Dict[str, Any]:
    """Every span of ``doc.spans[spans_key]`` (overlapping ones too) in displaCy's manual ``span``
    format, labels with their confidences; spans scored below ``min_score`` are left out."""
    group = doc.spans.get(spans_key)
    if group is None:
        raise KeyError(f"doc.spans has no {spans_key!r} group (it has {list(doc.spans.keys())}); "
                       "pass the component's spans_key.")
    confidences = group.attrs.get("scores") or [None] * len(group)
    spans = [{"start_token": s.start, "end_token": s.end, "base_label": s.label_,
              "label": _shown(s.label_, c if scores else None)}
             for s, c in zip(group, confidences) if c is None or c >= min_score]
    return {"text": doc.text, "spans": spans, "tokens": [t.text for t in doc], "title": None}


def colors(data: Iterable[Dict[str, Any]]) -> Dict[str, str]:
    """displaCy's ``colors`` option for data of :func:`ent_data` / :func:`span_data`: one colour
    per label, whatever score its spans show."""
    items = [item for d in data for item in d.get("ents", d.get("spans", []))]
    base = sorted({item["base_label"] for item in items})
    hue = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(base)}
    return {item["label"]: hue[item["base_label"]] for item in items}


# -- structures, relations, classes ------------------------------------------------------------


def _value(value: Any) -> str:
    """A field value or class decision: a span, choice or class with its confidence, a list of
    them, or nothing."""
    if value is None or value == []:
        return '<span style="color:#999">-</span>'
    if isinstance(value, list):
        return "<br>".join(_value(v) for v in value)
    if isinstance(value, dict) and ("text" in value or "label" in value):  # a span or choice; a class
        confidence = value.get("confidence")
        suffix = "" if confidence is None else f' <small style="color:#666">{confidence:.2f}</small>'
        return f"{escape(str(value.get('text', value.get('label'))))}{suffix}"
    return escape(str(value))


def _table(title: str, header: List[str], rows: List[List[str]]) -> str:
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='padding:2px 8px;vertical-align:top'>{c}</td>" for c in row) + "</tr>"
                   for row in rows)
    return (f"<h4 style='margin:12px 0 4px'>{escape(title)}</h4>"
            f"<table style='border-collapse:collapse;font-family:sans-serif;font-size:14px'>"
            f"<tr style='border-bottom:1px solid #ccc'>{head}</tr>{body}</table>")


def results_html(doc: Doc) -> str:
    """Classes, structures and relations of ``doc._.gliner2`` and classes of ``doc._.gliclass`` as
    HTML tables (empty string when neither is set)."""
    parts = []
    for name in EXTENSIONS:
        result = doc._.get(name) if Doc.has_extension(name) else None
        if not result:
            continue
        classes = result.get("classifications", {}) if name == "gliner2" else result
        if classes:
            parts.append(_table(f"{name}: classes", ["task", "label"],
                                [[escape(task), _value(cls)] for task, cls in classes.items()]))
        for structure, instances in result.get("structures", {}).items() if name == "gliner2" else ():
            fields = list(dict.fromkeys(f for instance in instances for f in instance))
            parts.append(_table(f"structure: {structure} ({len(instances)})", fields,
                                [[_value(instance.get(f)) for f in fields] for instance in instances]))
        for relation, pairs in result.get("relations", {}).items() if name == "gliner2" else ():
            parts.append(_table(f"relation: {relation} ({len(pairs)})", ["head", "tail"],
                                [[_value(p["head"]), _value(p["tail"])] for p in pairs]))
    return "".join(parts)


def render(doc: Doc, spans_key: str = "gliner2", page: bool = False, min_score: float = 0.0) -> str:
    """One HTML view of a Doc: ``doc.ents`` and all scored spans (displaCy, with confidences), then
    the tables of :func:`results_html`. ``page``: a whole HTML page instead of a fragment."""
    sections = []
    if doc.ents:
        ents = ent_data(doc, spans_key)
        sections.append(displacy.render(ents, style="ent", manual=True, jupyter=False,
                                        options={"colors": colors([ents])}))
    if doc.spans.get(spans_key):
        spans = span_data(doc, spans_key, min_score=min_score)
        sections.append(displacy.render(spans, style="span", manual=True, jupyter=False,
                                        options={"colors": colors([spans])}))
    sections.append(results_html(doc))
    body = "".join(s for s in sections if s)
    if not page:
        return f"<div class='spacy-gliner2'>{body}</div>"
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>spacy-gliner2</title></head>"
            f"<body style='margin:24px;font-family:sans-serif'>{body}</body></html>")
