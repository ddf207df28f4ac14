"""Decoding of GLiNER2.5 "boundary" scores: entities, plain structures and relations.

Mirrors gliner2 2.1.0's boundary engine: thresholds (and the count head's fill) per query, the
checkpoint's overlap policy per label or field, arguments outside the text dropped after
resolution, one instance per plain structure, relation edges collapsed to one per mention pair.
Offsets are characters of the text; the appended period is a zero-width word at its end.
"""
import functools
from typing import Any, Dict, List, Sequence, Tuple

import torch

from ..core.overlap import resolve
from ..schema import Schema
from ..text import Word
from .boundary import Candidates
from .boundary_records import decode_records, distinct
from .boundary_relations import RelationPairs
from .encoding import ENTITIES, RELATION, EncodedText, Segment
from .fields import choices

Span = Dict[str, Any]
Mention = Tuple[str, int, int, float]  # text, start, end, confidence (the reference's offsets)


def _resolved(candidates: Candidates, m: int, threshold: float, n_prefix: int, n_words: int,
              entity: bool = False) -> List[Tuple[float, int, int]]:
    """One query's candidates at or above ``threshold`` (plus the count head's fill), resolved by the
    checkpoint's overlap policy, those inside the text (boundary coordinates; spans outside are dropped
    after resolution, as the reference). An entity label may abstain (structure fields do not)."""
    if entity and candidates.abstains[m]:
        return []
    spans, probs, _ = candidates.query(m)
    keep = probs >= threshold
    if candidates.fill is not None:
        keep[torch.argsort(probs, descending=True, stable=True)[: candidates.fill[m]]] = True
    index = keep.nonzero().squeeze(-1)
    scored = list(zip(probs[index].tolist(), *spans[index].T.tolist()))
    return [(c, s, e) for c, s, e in resolve(scored, candidates.policy) if 0 <= s - n_prefix < e - n_prefix <= n_words]


def _to_span(found: Tuple[float, int, int], n_prefix: int, words: Sequence[Word], text: str) -> "Span | None":
    """The span's dict; None for a span of only the appended period (it covers no text)."""
    conf, s, e = found
    start, end = words[s - n_prefix][1], words[e - n_prefix - 1][2]
    return {"text": text[start:end], "confidence": conf, "start": start, "end": end} if end > start else None


def _spans(candidates: Candidates, m: int, threshold: float, n_prefix: int, words: Sequence[Word], text: str,
           first_only: bool = False) -> List[Span]:
    """A structure field's spans; ``first_only``: the best one, if it covers text."""
    found = _resolved(candidates, m, threshold, n_prefix, len(words))
    spans = [_to_span(f, n_prefix, words, text) for f in (found[:1] if first_only else found)]
    return distinct([s for s in spans if s])


def _entities(schema: Schema, seg: Segment, scores: Candidates, thresholds: Sequence[float], n_prefix: int,
              words: Sequence[Word], text: str) -> Dict[str, List[Span]]:
    """Entity spans per label, with their span attributes."""
    decoded = {}
    for m, entity in enumerate(schema.entities):
        found = _resolved(scores, m, thresholds[m], n_prefix, len(words), entity=True)
        decoded[entity.name] = [(f[1:], _to_span(f, n_prefix, words, text)) for f in found]
    if schema.entity_attributes:
        _attributes(schema, seg, scores, decoded)
    return {name: distinct([span for _, span in items if span]) for name, items in decoded.items()}


def _attributes(schema: Schema, seg: Segment, scores: Candidates, decoded: Dict[str, List[Tuple[Any, Span]]]) -> None:
    """Score every attribute label at every kept entity span (as the reference: on the shared pool,
    the spans forced into a pool of the attribute queries; per query, scored directly) and add each
    group's decision to the span dicts."""
    query = {name: m for m, name in enumerate(seg.names)}
    rows = list(dict.fromkeys((label, query[g.prompt_label(label)]) for g in schema.entity_attributes for label in g.labels))
    pairs = list(dict.fromkeys(coords for items in decoded.values() for coords, _ in items))
    if not pairs:
        return
    logits = scores.forced([q for _, q in rows], pairs)
    row = {label: r for r, (label, _) in enumerate(rows)}
    column = {coords: c for c, coords in enumerate(pairs)}
    for name, items in decoded.items():
        for coords, span in items:
            for group in schema.entity_attributes:
                if span is None or (group.applies_to is not None and name not in group.applies_to):
                    continue
                values = logits[[row[label] for label in group.labels], column[coords]]
                if group.multi_label:
                    probs = torch.sigmoid(values).tolist()
                    span[group.name] = [{"label": label, "confidence": p}
                                        for label, p in zip(group.labels, probs) if p >= group.threshold]
                else:
                    probs = torch.softmax(values, -1)
                    best = int(probs.argmax())
                    span[group.name] = {"label": group.labels[best], "confidence": float(probs[best])}


def _forced(candidates: Candidates, m: int, words: List[int]) -> List[float]:
    return torch.sigmoid(candidates.forced([m], [(i, i + 1) for i in words])[0]).tolist()


def _mention(words: Sequence[Word], text: str, s: int, e: int, conf: float) -> Mention:
    """A span of words with the reference's character offsets: the appended period is ``"."`` at
    ``[len(text), len(text) + 1)``."""
    start, end = words[s][1], words[e - 1][2]
    if e == len(words) and words[-1][1] == words[-1][2]:  # ends on the appended period
        return (text[start:] + ".", start, end + 1, conf)
    return (text[start:end], start, end, conf)


def _relations(pairs: RelationPairs, threshold: float, n_prefix: int, words: Sequence[Word], text: str) -> List[Dict[str, Any]]:
    edges = []
    for (hs, he), (ts, te), hp, tp, p in zip(pairs.heads, pairs.tails, pairs.head_probs, pairs.tail_probs, pairs.probs):
        hs, he, ts, te = hs - n_prefix, he - n_prefix, ts - n_prefix, te - n_prefix
        if p >= threshold and 0 <= hs < he <= len(words) and 0 <= ts < te <= len(words):
            edges.append({"score": p, "head": _mention(words, text, hs, he, hp), "tail": _mention(words, text, ts, te, tp)})
    out = []
    limit = words[-1][2] if words else len(text)  # a window's text ends at its last word (or appended period)
    for edge in deduplicate_edges(edges):
        head, tail = (_span(edge[side], limit) for side in ("head", "tail"))
        if head and tail:  # an argument of only the appended period covers no text
            out.append({"head": head, "tail": tail, "confidence": edge["score"]})
    return out


def _span(mention: Mention, length: int) -> "Span | None":
    surface, start, end, conf = mention
    end = min(end, length)
    return {"text": surface[: end - start], "confidence": conf, "start": start, "end": end} if end > start else None


def deduplicate_edges(edges: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The reference's edge clean-up: each mention becomes the longest mention (of the same side)
    that contains it, one edge per mention pair (best score), one per surface pair (closest, then
    best), and an edge whose argument's words are a strict subset of another edge's with the same
    other argument is dropped. Sorted by head start, tail start, score. Edges are bounded by
    ``relation_pair_cap``, so the pairwise steps stay small."""
    if len(edges) < 2:
        return edges

    def canonical(side: str) -> Dict[Tuple[int, int], Mention]:
        mentions = {(e[side][1], e[side][2]): e[side] for e in edges}
        return {key: max((m for m in mentions.values() if m[1] <= key[0] and m[2] >= key[1]),
                         key=lambda m: (m[2] - m[1], -m[1])) for key in mentions}

    heads, tails = canonical("head"), canonical("tail")
    exact: Dict[Tuple[int, int, int, int], Dict[str, Any]] = {}
    for edge in edges:
        head, tail = heads[edge["head"][1:3]], tails[edge["tail"][1:3]]
        key = (head[1], head[2], tail[1], tail[2])
        if key not in exact or edge["score"] > exact[key]["score"]:
            exact[key] = {**edge, "head": head, "tail": tail}

    def words_of(surface: str) -> str:
        return " ".join(surface.casefold().split())

    def rank(edge: Dict[str, Any]) -> Tuple:
        (_, hs, he, _), (_, ts, te, _) = edge["head"], edge["tail"]
        return (max(hs - te, ts - he, 0), -edge["score"], hs, ts)

    semantic: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for edge in exact.values():
        key = (words_of(edge["head"][0]), words_of(edge["tail"][0]))
        if key not in semantic or rank(edge) < rank(semantic[key]):
            semantic[key] = edge
    values = list(semantic.values())
    sets = [(set(words_of(e["head"][0]).split()), set(words_of(e["tail"][0]).split())) for e in values]

    def dominated(i: int) -> bool:
        h, t = sets[i]
        return any(j != i and ((h < oh and t == ot) or (t < ot and h == oh)) for j, (oh, ot) in enumerate(sets))

    kept = [e for i, e in enumerate(values) if not dominated(i)]
    return sorted(kept, key=lambda e: (e["head"][1], e["tail"][1], -e["score"]))


def decode_boundary_task(result: Dict[str, Any], schema: Schema, record: EncodedText, seg: Segment, scores: Any,
                         thresholds: Sequence[float], words: Sequence[Word], text: str) -> None:
    """Decode one task of a boundary checkpoint into ``result``."""
    if seg.kind == RELATION:
        rel = schema.relations[seg.index]
        result["relations"][rel.name] = _relations(scores, thresholds[0], record.n_prefix, words, text)
    elif seg.kind == ENTITIES:
        result["entities"] = _entities(schema, seg, scores, thresholds, record.n_prefix, words, text)
    elif schema.structures[seg.index].mode:  # a record structure: its instances
        structure = schema.structures[seg.index]
        result["structures"][structure.name] = decode_records(structure, scores.records(structure), schema.threshold,
                                                              record.n_prefix, words, text, record.prefix,
                                                              functools.partial(_forced, scores))
    else:  # a plain structure: one instance (list fields: every span; str: the best; choices)
        structure = schema.structures[seg.index]
        instance = {}
        for m, f in enumerate(structure.fields):
            if f.choices:
                instance[f.name] = choices(functools.partial(_forced, scores, m), f.choices, record.prefix, f.dtype,
                                           thresholds[m])
                continue
            found = _spans(scores, m, thresholds[m], record.n_prefix, words, text, first_only=f.dtype == "str")
            instance[f.name] = found if f.dtype == "list" else (found[0] if found else None)
        keep = any(v not in (None, []) for v in instance.values())
        result["structures"][structure.name] = [instance] if keep else []
