"""Record-mode structures of GLiNER2.5 "boundary" checkpoints: many instances of one structure.

As gliner2 2.1.0: every candidate span gets a state ``x_c`` (``candidate_encoder`` over its two
boundary states). Instances are candidates (``natural``: the anchor field's, scored by their pair
logit; ``latent``: every candidate, by ``latent_seed_head``) or learned queries attending over the
candidates (``anchorless``: ``object_head``). A field's candidates are the shared pool or, on
per-query checkpoints, its own query's proposals (latent instances are then (field, span) pairs).
Each (instance, field) scores ABSENT and every candidate of the field:
``(W_inst u + W_field q) . [null ; W_cand x]``. Instances with ``sigmoid(object / T_rec) >= threshold``
are decoded, best first; each field takes spans by its cardinality: lists every span with
``sigmoid >= threshold``, single fields the most probable choice (softmax), ``exclusive`` fields share
their spans out (lists: each span to its best instance; single: a linear-sum assignment). A span's
confidence is the lower of its pair probability and its assignment probability. Natural records are
ordered by anchor; the others keep the first of identical records.
"""
import functools
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..core.overlap import resolve
from ..schema import Structure
from ..text import Word
from .boundary import Candidates
from .fields import choices

SCALAR = ("optional_one", "required_one")
ALLOWS_ABSENT = ("optional_one", "zero_or_more")
EPS32 = float(torch.finfo(torch.float32).eps)


class RecordDecoder(nn.Module):
    """The ``record_decoder`` weights of a checkpoint with ``enable_records``."""

    def __init__(self, hidden: int, dim: int, instances: int, temperature: float = 1.0):
        super().__init__()
        self.temperature = temperature
        self.inst_proj, self.field_proj, self.cand_proj = (nn.Linear(hidden, dim) for _ in range(3))
        self.null_embed = nn.Parameter(torch.zeros(dim))
        self.object_head = nn.Linear(hidden, 1)
        self.latent_seed_head = nn.Linear(hidden, 1)
        self.instance_embed = nn.Parameter(torch.zeros(instances, hidden))
        self.q_proj, self.k_proj = nn.Linear(hidden, dim), nn.Linear(hidden, dim)
        self.v_proj = nn.Linear(hidden, hidden)


@dataclass
class RecordScores:
    """One record structure's scores in one text, per field: its candidate ``spans`` ``(C_f, 2)`` (the
    shared pool, or the field query's own proposals) and their pair probabilities ``pairs``, and
    ``assign`` ``(N, 1 + C_f)`` logits of ABSENT and each of them per instance; the instances'
    ``objects`` ``(N,)`` logits and (natural) ``slots``: each instance's index among the anchor
    field's candidates."""

    spans: List[torch.Tensor]
    pairs: List[torch.Tensor]
    objects: torch.Tensor
    slots: Optional[List[int]]
    assign: List[torch.Tensor]
    temperature: float
    policy: str


def score_records(decoder: RecordDecoder, candidate_encoder: nn.Linear, candidates: Candidates,
                  fields: torch.Tensor, structure: Structure) -> RecordScores:
    """The record scores of ``structure`` from its fields' ``candidates`` and query states ``fields`` ``(F, H)``.

    Shared pool: every field reads the same spans, latent instances are pool spans and anchorless
    ones attend over the pool. Per-query proposals: each field reads its own spans, latent
    instances are (field, span) pairs and anchorless ones attend over all fields' spans."""
    states = candidates.states

    def encoded(spans: torch.Tensor) -> torch.Tensor:  # (C, H)
        return candidate_encoder(torch.cat([states[spans[:, 0]], states[spans[:, 1]]], -1))

    per_field = [candidates.query(f) for f in range(len(structure.fields))]
    if candidates.shared:
        context = encoded(candidates.spans)
        xs = [context] * len(per_field)
    else:
        xs = [encoded(spans) for spans, _, _ in per_field]
        context = torch.cat(xs)
    slots = None
    if structure.mode == "natural":
        anchor = [f.name for f in structure.fields].index(structure.anchor)
        instances, objects, slots = xs[anchor], per_field[anchor][2], list(range(len(xs[anchor])))
    elif structure.mode == "latent":
        instances, objects = context, decoder.latent_seed_head(context).squeeze(-1)
    else:  # anchorless: learned queries read the candidates
        instances = decoder.instance_embed
        if len(context):
            attention = decoder.q_proj(instances) @ decoder.k_proj(context).T / math.sqrt(decoder.q_proj.out_features)
            instances = instances + torch.softmax(attention, -1) @ decoder.v_proj(context)
        objects = decoder.object_head(instances).squeeze(-1)
    mixed = decoder.inst_proj(instances)[:, None] + decoder.field_proj(fields)[None]  # (N, F, D)
    assign = [torch.cat([(mixed[:, f] @ decoder.null_embed)[:, None], mixed[:, f] @ decoder.cand_proj(x).T], -1)
              for f, x in enumerate(xs)]
    return RecordScores([spans for spans, _, _ in per_field], [probs for _, probs, _ in per_field], objects, slots,
                        assign, decoder.temperature, candidates.policy)


def _cardinality(structure: Structure, f: int) -> str:
    field = structure.fields[f]
    if field.cardinality:
        return field.cardinality
    # the reference's default: the anchor takes one span; every other field (str ones too) a list
    return "required_one" if field.name == structure.anchor else "zero_or_more"


def _single(structure: Structure, f: int) -> bool:
    """Whether field ``f`` takes one span (its cardinality, or a ``str`` dtype)."""
    return _cardinality(structure, f) in SCALAR or structure.fields[f].dtype == "str"


def _assignment(probs: torch.Tensor, allows_absent: bool) -> List[Optional[int]]:
    """Per instance row, its candidate column (None: ABSENT) by a minimum-cost assignment over
    ``-log P`` (each column once; ABSENT per row costs ``-log P(ABSENT)``, or more than any span
    when the field needs one), ties broken by position as the reference."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as error:
        raise ImportError("An exclusive single field of a record structure is assigned with scipy, which is not "
                          "installed: pip install 'spacy-gliner2[records]' (or scipy).") from error

    probs = probs.detach().float().cpu()
    rows, n_cands = probs.shape[0], probs.shape[1] - 1
    costs = -torch.log(probs[:, 1:].clamp_min(EPS32))
    worst = float(costs.max()) if n_cands else 0.0
    absent = -torch.log(probs[:, 0].clamp_min(EPS32)) if allows_absent else torch.full((rows,), worst + 50.0)
    blocked = max(worst, float(absent.max())) + 1000.0
    square = torch.full((rows, rows), blocked)
    square[range(rows), range(rows)] = absent
    cost = torch.cat([costs, square], 1).double()
    cost = cost + torch.finfo(torch.float64).eps * max(float(cost.abs().max()), 1.0) * torch.arange(cost.numel(),
                                                                                                      dtype=torch.float64).view_as(cost)
    picked: List[Optional[int]] = [None] * rows
    for r, c in zip(*linear_sum_assignment(cost.numpy())):
        picked[int(r)] = int(c) if c < n_cands else None
    return picked


def _instances(structure: Structure, scores: RecordScores, threshold: float) -> List[Dict[int, List[Tuple[int, float]]]]:
    """The selected instances' fields, best first (natural: by anchor): ``{field: [(candidate column, prob)]}``."""
    temperature = scores.temperature
    probs = torch.sigmoid(scores.objects / temperature)
    order = sorted((i for i in range(len(probs)) if probs[i] >= threshold), key=lambda i: (-float(probs[i]), i))
    if not order or not any(len(spans) for spans in scores.spans):
        return []
    found: List[Dict[int, List[Tuple[int, float]]]] = [{} for _ in order]
    for f in range(len(structure.fields)):
        cardinality, exclusive = _cardinality(structure, f), structure.fields[f].exclusive
        scalar, allows_absent = cardinality in SCALAR, cardinality in ALLOWS_ABSENT
        if structure.mode == "natural" and structure.fields[f].name == structure.anchor:
            for r, i in enumerate(order):
                found[r][f] = [(scores.slots[i], float(probs[i]))]
            continue
        logits = scores.assign[f][order] / temperature  # (R, 1 + C_f)
        soft = torch.softmax(logits, -1)
        if exclusive and scalar:
            for r, col in enumerate(_assignment(soft, allows_absent) if soft.shape[1] > 1 else [None] * len(order)):
                p = None if col is None else float(soft[r, 1 + col])
                if p is not None and not (p < threshold and allows_absent):
                    found[r][f] = [(col, p)]
        elif scalar:
            for r in range(len(order)):
                ranked = torch.argsort(soft[r], descending=True).tolist()
                col = next((c for c in ranked if c > 0 or allows_absent), 0)
                if col > 0 and not (soft[r, col] < threshold and allows_absent):
                    found[r][f] = [(col - 1, float(soft[r, col]))]
        else:
            sig = torch.sigmoid(logits[:, 1:])  # (R, C_f); ABSENT plays no part in a list
            if exclusive:
                best, owner = sig.max(0)
                for c in range(sig.shape[1]):
                    if best[c] >= threshold:
                        found[int(owner[c])].setdefault(f, []).append((c, float(best[c])))
            else:
                for r in range(len(order)):
                    cols = (sig[r] >= threshold).nonzero().squeeze(-1).tolist()
                    if cols:
                        found[r][f] = [(c, float(sig[r, c])) for c in cols]
    spans = [s.tolist() for s in scores.spans]
    if structure.mode == "natural":  # every instance, in anchor order
        anchor = [f.name for f in structure.fields].index(structure.anchor)
        return [fields for _, fields in sorted(zip(order, found), key=lambda item: tuple(spans[anchor][scores.slots[item[0]]]))]
    seen, unique = set(), []
    for fields in found:  # the first of identical instances
        key = tuple((f, tuple(sorted(tuple(spans[f][c]) for c, _ in fields[f]))) for f in sorted(fields))
        if fields and key not in seen:
            seen.add(key)
            unique.append(fields)
    return unique


def distinct(spans: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The first span of each ``(start, end)``: a span ending on the appended period has the offsets of
    the same span without it (the reference reports both, one a character past the text)."""
    seen = set()
    return [s for s in spans if (s["start"], s["end"]) not in seen and not seen.add((s["start"], s["end"]))]


def decode_records(structure: Structure, scores: RecordScores, threshold: float, n_prefix: int,
                   words: Sequence[Word], text: str, prefix: Sequence[str],
                   choice_probs: Callable[[int, List[int]], List[float]]) -> List[Dict[str, Any]]:
    """The instances of a record structure in one text (``doc._.gliner2["structures"][name]``);
    ``prefix``: the prompt's choice words, ``choice_probs(field, word indices)``: a field's
    probabilities at those prefix words (choice fields, :class:`ChoiceField`)."""
    spans = [s.tolist() for s in scores.spans]
    n_chars = len(text)
    # the period the prompt appends to every text is a zero-width word here and a character in the
    # reference: overlaps are resolved as if it had one, and a span of only that period is dropped after
    ends = [e + 1 if s == e == n_chars else e for _, s, e in words]

    def chars(span: Sequence[int]) -> Optional[Tuple[int, int]]:
        s, e = span[0] - n_prefix, span[1] - n_prefix
        return (words[s][1], ends[e - 1]) if 0 <= s < e <= len(words) else None

    found = _instances(structure, scores, threshold)
    anchors: List[Optional[Tuple[int, int]]] = [None] * len(found)
    if structure.mode == "natural":
        a = [f.name for f in structure.fields].index(structure.anchor)
        anchors = [chars(spans[a][fields[a][0][0]]) if a in fields else None for fields in found]
    choice_fields = {f: ChoiceField(field, _single(structure, f), prefix, text, anchors,
                                    functools.partial(choice_probs, f), threshold)
                     for f, field in enumerate(structure.fields) if field.choices}
    out = []
    for r, fields in enumerate(found):
        instance: Dict[str, Any] = {}
        for f, field in enumerate(structure.fields):
            cardinality = _cardinality(structure, f)
            items = []
            for c, assigned in fields.get(f, []):
                pair = float(scores.pairs[f][c])
                conf = min(pair, assigned)
                if field.choices and spans[f][c][1] <= n_prefix:  # a choice word of the prompt's prefix
                    word = choice_fields[f].words.get(spans[f][c][0])
                    if word and (field.threshold is None or conf >= field.threshold):
                        items.append((conf, *(anchors[r] or (0, 0)), word))
                    continue
                span = chars(spans[f][c])
                if span is None:
                    continue  # in the prompt's prefix, or across it
                start, end = span
                if not (end > n_chars or text[start:end].strip()) or (cardinality in ALLOWS_ABSENT and pair < threshold):
                    continue
                if field.threshold is None or conf >= field.threshold:
                    items.append((conf, start, end, text[start:min(end, n_chars)].strip()))
            single = _single(structure, f)
            kept = resolve(items, scores.policy)[: 1 if single else None]
            if field.choices:
                instance[field.name] = choice_fields[f].value(kept, r)
                continue
            kept = [{"text": text[s:min(e, n_chars)], "confidence": c, "start": s, "end": min(e, n_chars)}
                    for c, s, e, _ in kept]
            kept = distinct([span for span in kept if span["end"] > span["start"]])
            instance[field.name] = (kept[0] if kept else None) if single else kept
        if any(v not in (None, []) for v in instance.values()):
            out.append(instance)
    return out


def _choice_words(choices: Sequence[str], prefix: Sequence[str]) -> Dict[int, str]:
    """Prefix word index -> choice (each choice at its first word in the prefix, ignoring case)."""
    lowered = [p.lower() for p in prefix]
    return {lowered.index(c.lower()): c for c in choices if c.lower() in lowered}


def _literal_mentions(text: str, choices: Sequence[str], anchors: Sequence[Optional[Tuple[int, int]]]
                      ) -> Tuple[bool, Dict[int, List[Tuple[str, int, int]]]]:
    """Whether a choice occurs literally in the text, and each record's mentions: a mention belongs to
    the last anchor starting at or before it (before the first anchor: the first), one per choice."""
    mentions = [(c, m.start(), m.end()) for c in choices
                for m in re.finditer(rf"(?<!\w){re.escape(c)}(?!\w)", text, flags=re.IGNORECASE)]
    if not mentions:
        return False, {}
    placed = sorted(((i, a) for i, a in enumerate(anchors) if a is not None), key=lambda item: (item[1][0], item[0]))
    if not placed:
        return True, {}
    owned: Dict[int, Dict[str, Tuple[str, int, int]]] = {}
    for mention in sorted(mentions, key=lambda m: m[1]):
        before = [item for item in placed if item[1][0] <= mention[1]]
        owner = max(before, key=lambda item: (item[1][0], item[0]))[0] if before else placed[0][0]
        owned.setdefault(owner, {}).setdefault(mention[0], mention)
    return True, {owner: sorted(m.values(), key=lambda m: m[1]) for owner, m in owned.items()}


class ChoiceField:
    """A choice field of a record structure in one text, decided per record as the reference does:
    the choices mentioned literally in the text near a natural record's anchor (with their offsets),
    else the choices among the record's own assigned spans (a choice word of the prefix, or a text
    span naming a choice), else the field scored as a plain choice field. What the records share is
    found once: the choice words, the mentions, the field's probabilities."""

    def __init__(self, field: Any, single: bool, prefix: Sequence[str], text: str,
                 anchors: Sequence[Optional[Tuple[int, int]]], probs: Callable[[List[int]], List[float]],
                 threshold: float):
        self.field, self.single, self.prefix, self.anchors = field, single, prefix, anchors
        self.n_chars = len(text)
        self.threshold = threshold if field.threshold is None else field.threshold
        self.words = _choice_words(field.choices, prefix)  # prefix word index -> choice
        self.literal, self.mentions = (_literal_mentions(text, field.choices, anchors)
                                       if any(a is not None for a in anchors) else (False, {}))
        self._probs, self._scored = probs, {}

    def probs(self, indices: List[int]) -> List[float]:
        """The field's probabilities at prefix words ``indices`` (each scored once)."""
        missing = [i for i in indices if i not in self._scored]
        if missing:
            self._scored.update(zip(missing, self._probs(missing)))
        return [self._scored[i] for i in indices]

    def value(self, kept: List[Tuple[float, int, int, str]], r: int) -> Any:
        """Record ``r``'s value, from its assigned spans ``kept`` (confidence, start, end, surface)."""
        def value(choice: str, conf: float, start: Optional[int] = None, end: Optional[int] = None) -> Dict[str, Any]:
            if start is None:
                return {"text": choice, "confidence": conf}
            # offsets into the text (an anchor may end on the appended period, past it)
            return {"text": choice, "confidence": conf, "start": min(start, self.n_chars), "end": min(end, self.n_chars)}

        def field_level() -> Any:
            return choices(self.probs, self.field.choices, self.prefix, "str" if self.single else "list", self.threshold)

        anchor = self.anchors[r] if r < len(self.anchors) else None
        if anchor is not None:
            preferred = self.mentions.get(r, [])
            if preferred:
                if self.single:
                    preferred = [min(preferred, key=lambda m: max(anchor[0] - m[2], m[1] - anchor[1], 0))]
                if not self.words:
                    return None if self.single else []
                scored = dict(zip(self.words.values(), self.probs(list(self.words))))
                values = [value(c, scored[c], s, e) for c, s, e in preferred if c in scored]
                if values:
                    return values[0] if self.single else values
                return field_level()
            if self.literal:
                return None if self.single else []
        lookup = {c.casefold(): c for c in self.field.choices}
        matched = [value(lookup[surface.casefold()], conf, start, end) for conf, start, end, surface in kept
                   if surface.casefold() in lookup]
        if matched:
            return matched[0] if self.single else matched
        return field_level()
