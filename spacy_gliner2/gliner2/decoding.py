"""Raw scores -> plain result dicts, with the reference's decoding rules.

A result is ``{"entities": {label: [span]}, "classifications": {task: cls},
"structures": {name: [instance]}, "relations": {name: [{"head", "tail"}]}}`` where a
span is ``{"text", "confidence", "start", "end"}`` (character offsets into the
document) and ``cls`` is ``{"label", "confidence"}`` (a list of those when
multi-label). Class probabilities of every label are returned beside it.
Knows nothing of spaCy.
"""
import functools
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..core.classes import classify, merge_classes
from ..core.intervals import greedy_disjoint
from ..core.overlap import resolve
from ..schema import Schema
from ..text import Word
from .boundary import Candidates
from .encoding import CLASSIFICATION, ENTITIES, RELATION, STRUCTURE, EncodedText
from .model import TaskScores

Span = Dict[str, Any]
Result = Dict[str, Dict[str, Any]]
Probs = Dict[str, Dict[str, float]]


def empty_result() -> Result:
    return {"entities": {}, "classifications": {}, "structures": {}, "relations": {}}


class _SpanTask:
    """Thresholded candidates of one span task, grouped per (instance, field)."""

    def __init__(self, logits: torch.Tensor, n_prefix: int, thresholds: Sequence[float]):
        text = logits[:, :, n_prefix:, :]
        probs = torch.sigmoid(text)
        thr = torch.tensor(thresholds, dtype=probs.dtype, device=probs.device)
        # -inf marks spans the model rules out (past the text, bounded by a word it cannot see)
        mask = (probs >= thr[None, :, None, None]) & (text > float("-inf"))
        idx = mask.nonzero().tolist()  # row-major: instance, field, start, width
        conf = probs[mask].tolist()
        self.groups: Dict[Tuple[int, int], List[Tuple[float, int, int]]] = {}
        for (k, m, i, w), c in zip(idx, conf):
            self.groups.setdefault((k, m), []).append((c, i, i + w))
        self.prefix_probs = torch.sigmoid(logits[:, :, :n_prefix, 0]).tolist() if n_prefix else None

    def spans(self, k: int, m: int, words: Sequence[Word], text: str, first_only: bool = False) -> List[Span]:
        """Greedy by confidence, skipping spans overlapping a kept one."""
        ranked = sorted(self.groups.get((k, m), ()), key=lambda c: -c[0])
        if first_only:
            kept = ranked[:1]
        else:  # end word j is inclusive
            kept = [ranked[n] for n in greedy_disjoint(((i, j + 1) for _, i, j in ranked), len(words))]
        out = []
        for conf, i, j in kept:
            start, end = words[i][1], words[j][2]
            if end > start:  # a span of only the appended period covers no text
                out.append({"text": text[start:end], "confidence": conf, "start": start, "end": end})
        return out


def _boundary_spans(
    candidates: Candidates, m: int, threshold: float, n_prefix: int, words: Sequence[Word], text: str,
    entity: bool = False, first_only: bool = False,
) -> List[Span]:
    """One query's candidates at or above ``threshold`` (plus the count head's fill), resolved by the
    checkpoint's overlap policy; spans outside the text are dropped after resolution, as the reference.
    An entity label may abstain (structure fields do not). ``first_only``: the best resolved span, if
    it covers text (not only the appended period)."""
    if entity and candidates.abstains[m]:
        return []
    probs = candidates.probs[m]
    keep = probs >= threshold
    if candidates.fill is not None:
        keep[torch.argsort(probs, descending=True, stable=True)[: candidates.fill[m]]] = True
    index = keep.nonzero().squeeze(-1)
    scored = list(zip(probs[index].tolist(), *candidates.spans[index].T.tolist()))
    out = []
    for conf, s, e in resolve(scored, candidates.policy):
        s, e = s - n_prefix, e - n_prefix
        if not 0 <= s < e <= len(words):
            continue
        start, end = words[s][1], words[e - 1][2]
        if end > start:
            out.append({"text": text[start:end], "confidence": conf, "start": start, "end": end})
        if first_only:
            break
    return out


def _choices(
    probs: Callable[[List[int]], List[float]], choices: Sequence[str], prefix: Sequence[str], dtype: str, threshold: float
) -> Any:
    """A choice field's value: each choice is scored at its word in the prefix (``probs`` of those
    word indices; a choice not found there as one word cannot be chosen)."""
    lowered = [p.lower() for p in prefix]
    present = [c for c in dict.fromkeys(choices) if c.lower() in lowered]
    if not present:
        return [] if dtype == "list" else None
    scored = list(zip(present, probs([lowered.index(c.lower()) for c in present])))
    if dtype == "list":
        return [{"text": c, "confidence": p} for c, p in scored if p >= threshold]
    best = max(scored, key=lambda x: x[1], default=None)  # first of equal maxima
    return {"text": best[0], "confidence": best[1]} if best and best[1] >= threshold else None


def _prefix_probs(task: _SpanTask, k: int, m: int, words: List[int]) -> List[float]:
    return [task.prefix_probs[k][m][i] for i in words]


def _forced(candidates: Candidates, m: int, words: List[int]) -> List[float]:
    return candidates.forced(m, [(i, i + 1) for i in words])


def decode(
    schema: Schema,
    record: EncodedText,
    scores: Sequence[TaskScores],
    words: Sequence[Word],
    text: str,
) -> Tuple[Result, Probs]:
    """Decode one record's scores. ``words`` are the text words (prefix excluded)."""
    result, probs = empty_result(), {}
    for slots, task_scores in zip(record.tasks, scores):
        seg = slots.segment
        if seg.kind == CLASSIFICATION:
            task = schema.classifications[seg.index]
            result["classifications"][task.name], probs[task.name] = classify(task, task_scores.logits)
            continue
        if seg.kind == ENTITIES:
            thresholds = [schema.threshold if e.threshold is None else e.threshold for e in schema.entities]
        elif seg.kind == STRUCTURE:
            fields = schema.structures[seg.index].fields
            thresholds = [schema.threshold if f.threshold is None else f.threshold for f in fields]
        else:
            rel = schema.relations[seg.index]
            thresholds = [schema.threshold if rel.threshold is None else rel.threshold] * 2
        if isinstance(task_scores, Candidates):  # a boundary checkpoint
            if seg.kind == ENTITIES:
                result["entities"] = {
                    name: _boundary_spans(task_scores, m, thresholds[m], record.n_prefix, words, text, entity=True)
                    for m, name in enumerate(seg.names)}
            else:  # a plain structure: one instance (list fields: every span; str: the best; choices)
                structure = schema.structures[seg.index]
                instance = {}
                for m, f in enumerate(structure.fields):
                    if f.choices:
                        forced = functools.partial(_forced, task_scores, m)
                        instance[f.name] = _choices(forced, f.choices, record.prefix, f.dtype, thresholds[m])
                        continue
                    found = _boundary_spans(task_scores, m, thresholds[m], record.n_prefix, words, text,
                                            first_only=f.dtype == "str")
                    instance[f.name] = found if f.dtype == "list" else (found[0] if found else None)
                keep = any(v not in (None, []) for v in instance.values())
                result["structures"][structure.name] = [instance] if keep else []
            continue
        spans = _SpanTask(task_scores.logits, record.n_prefix, thresholds) if task_scores.count else None
        if seg.kind == ENTITIES:
            result["entities"] = {
                name: spans.spans(0, m, words, text) if spans else [] for m, name in enumerate(seg.names)
            }
        elif seg.kind == RELATION:
            found = []
            for k in range(task_scores.count):
                head, tail = (spans.spans(k, m, words, text, first_only=True) for m in (0, 1))
                if head and tail:
                    found.append({"head": head[0], "tail": tail[0]})
            result["relations"][rel.name] = found
        else:
            structure = schema.structures[seg.index]
            instances = []
            for k in range(task_scores.count):
                instance: Dict[str, Any] = {}
                for m, f in enumerate(structure.fields):
                    if f.choices:
                        probs = functools.partial(_prefix_probs, spans, k, m)
                        instance[f.name] = _choices(probs, f.choices, record.prefix, f.dtype, thresholds[m])
                    else:
                        found = spans.spans(k, m, words, text, first_only=f.dtype == "str")
                        instance[f.name] = found if f.dtype == "list" else (found[0] if found else None)
                if any(v not in (None, []) for v in instance.values()):
                    instances.append(instance)
            result["structures"][structure.name] = instances
    return result, probs


# -- long texts: merging window results on global offsets --------------------


def _merge_spans(spans: List[Span], policy: Optional[str] = None) -> List[Span]:
    """Same-label spans from overlapping windows: greedy by confidence, no overlaps; or, for a
    boundary checkpoint, its overlap ``policy`` on document offsets."""
    if policy is not None:
        scored = [(s["confidence"], s["start"], s["end"], i) for i, s in enumerate(spans)]
        return [spans[i] for *_, i in resolve(scored, policy)]
    ranked = sorted(spans, key=lambda s: (-s["confidence"], s["start"], s["end"]))
    return [ranked[i] for i in greedy_disjoint((s["start"], s["end"]) for s in ranked)]


def _key(value: Any) -> Any:
    """A confidence-free identity of a structure instance or relation."""
    if isinstance(value, dict):
        return tuple(sorted((k, _key(v)) for k, v in value.items() if k != "confidence"))
    if isinstance(value, list):
        return tuple(_key(v) for v in value)
    return value


def _best(value: Any) -> float:
    if isinstance(value, dict):
        if "confidence" in value:
            return value["confidence"]
        return max((_best(v) for v in value.values()), default=0.0)
    if isinstance(value, list):
        return max((_best(v) for v in value), default=0.0)
    return 0.0


def _dedupe(items: List[Any]) -> List[Any]:
    found: Dict[Any, Any] = {}
    for item in items:
        key = _key(item)
        if key not in found or _best(item) > _best(found[key]):
            found[key] = item
    return list(found.values())


def merge_windows(parts: Sequence[Tuple[Result, Probs]], policy: Optional[str] = None) -> Tuple[Result, Probs]:
    """Merge the results of one document's windows (offsets already global).

    Entities: per label, greedy by confidence without overlaps (``policy``: a boundary checkpoint's
    overlap policy instead). Structures and
    relations: concatenated, duplicates kept once (highest confidence).
    Classification: :func:`~..core.classes.merge_classes`.
    """
    if len(parts) == 1:
        return parts[0]
    result, probs = empty_result(), {}
    first = parts[0][0]
    for label in first["entities"]:
        result["entities"][label] = _merge_spans([s for r, _ in parts for s in r["entities"][label]], policy)
    for section in ("structures", "relations"):
        for name in first[section]:
            result[section][name] = _dedupe([x for r, _ in parts for x in r[section][name]])
    for task in first["classifications"]:
        result["classifications"][task], probs[task] = merge_classes([(r["classifications"][task], p[task]) for r, p in parts])
    return result, probs

